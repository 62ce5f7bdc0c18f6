"""wgs: workgraph services — create, spawn, supervise and explain LLM chat agents."""

__version__ = "0.1.0"
