"""Leaf helpers every layer may use: redaction, durations, names, ownership, Ctrl-C."""
