"""Plug-in discovery: stores, lock services, workloads and fault kinds by entry point."""
