"""Workloads: what the clients do and which invariants must hold afterwards."""
