"""The `wgs` command-line interface."""
