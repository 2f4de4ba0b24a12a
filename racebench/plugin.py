"""What a plug-in workload imports: the check it returns and the context of one operation.

See docs/workloads-custom.md ("Python plug-ins") and racebench.workloads.custom.plugin for the
protocol.
"""

from racebench.workloads.counters import Check, Invariant
from racebench.workloads.custom.plugin import OperationContext, RunContext

__all__ = ["Check", "Invariant", "OperationContext", "RunContext"]
