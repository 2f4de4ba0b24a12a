"""Users' own workloads: SQL and Redis templates and Python plug-ins (docs/workloads-custom.md)."""
