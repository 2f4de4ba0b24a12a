"""What a plug-in workload imports: the check it returns and the context of one operation.

See docs/workloads-custom.md ("Python plug-ins") and racebench.custom.plugin for the protocol.
"""

from racebench.custom.plugin import OperationContext, RunContext
from racebench.workloads import Check, Invariant

__all__ = ["Check", "Invariant", "OperationContext", "RunContext"]
