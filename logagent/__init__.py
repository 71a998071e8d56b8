"""logagent: a node log collection agent (container logs, host files, kernel signals -> ES, Loki, SLS)."""

__version__ = "0.1.0"
