"""Agent processes run by the supervisor: the built-in OpenAI-compatible chat agent (`native`) and
the runners for the `claude` and `codex` CLIs. Entry point: `wgs-agent` (wgs.agent.main)."""
