"""The supervisor service."""
