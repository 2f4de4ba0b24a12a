"""Stores: one module per server kind, registered in racebench.plugins.registry."""
