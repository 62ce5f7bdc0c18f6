"""The three wgs services: graph, dispatch, supervisor."""
