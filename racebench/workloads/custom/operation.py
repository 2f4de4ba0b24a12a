"""The loop body of one client of a custom workload, by strategy.

`none` runs the operation as written; `lock` runs it inside the lock service's critical
section with the same bookkeeping as the built-in workloads (guards.locked_step), the
fencing token passed as `:token`; any other strategy is the workload's own (a transaction
at an isolation level), run by `CustomClient.step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from racebench.guards import Operation, as_operation, locked_step
from racebench.history import Outcome
from racebench.stores.base import OK_STEP, StepResult
from racebench.workloads.custom.base import CustomClient

if TYPE_CHECKING:
    from racebench.locks.base import LockClient
    from racebench.protocol import Probe


def build_custom_operation(
    client: CustomClient,
    strategy: str,
    lock: LockClient | None,
    fencing: bool,
    probe: Probe | None,
) -> Operation:
    """The loop body of one client of a custom workload, by strategy."""
    step: Callable[[int], StepResult]
    if strategy == "none":

        def unguarded(seq: int) -> StepResult:
            outcome = client.run_operation(seq, None)
            return OK_STEP if outcome == Outcome.OK else StepResult(outcome)

        step = unguarded
    elif strategy == "lock":
        assert lock is not None
        step = locked_step(client.run_operation, client.options.client_id, lock, fencing, probe)
    else:

        def native(seq: int) -> StepResult:
            return client.step(strategy, seq)

        step = native
    return as_operation(step, client)
