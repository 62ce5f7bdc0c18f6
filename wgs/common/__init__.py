"""Shared runtime of the wgs services: config, logging, telemetry, server bootstrap, clients."""
