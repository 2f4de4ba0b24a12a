# The C fast path of the blocking loop (_blocking_loop.c), for mypy.
from collections.abc import Callable
from typing import Any

def run(
    call: Callable[[int], object],
    execute: Callable[..., Any] | None,
    statement_args: tuple[Any, ...],
    seq: int,
    quota: int,
    until_ns: int,
    records: Any,
    offset: int,
    start_at: int,
    end_at: int,
    intended_at: int,
    ok_mark: object,
    ok_record: bytes,
    rejected_mark: object,
    rejected_record: bytes,
    inflight: Any,
    done: Any,
    client: int,
    /,
) -> tuple[int, int, int, int, int, Any]: ...
