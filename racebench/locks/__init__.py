"""Lock services: one module per service, registered in racebench.plugins.registry."""
