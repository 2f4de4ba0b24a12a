"""racebench: fire real concurrent clients at real servers and verify the invariants."""

__version__ = "0.1.0"
