"""Redis template workloads (`workload.type: redis`): commands or Lua, raced and checked.

    workload:
      type: redis
      setup:
        - [SET, "{{key:count}}", 0]
      operation:
        - command: [GET, "{{key:count}}"]
          as: count                          # binds the reply as :count
        - command: [SET, "{{key:count}}", "=:count + 1"]
          when: ":count < 10"                # false: the operation is rejected
      invariants:
        - name: at most 10 allowed
          command: [GET, "{{key:count}}"]
          holds: ":result <= 10"             # or expect: 10

`{{key:x}}` is a key of this run only (under `racebench:<namespace>:`, deleted at the end);
an argument that starts with `=` is an expression over bound names (`=:count + 1`). A step
may be a Lua script instead of a command (`script`, `keys`, `args`), which Redis runs
atomically. Replies bind as text, or as integers when they are whole numbers, NULL (nil)
when absent. The race window sits between the last read and the first write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from racebench.errors import ScenarioError
from racebench.history import Outcome, RunHistory
from racebench.stores.base import ClientOptions, StrategySpec, UnknownOutcome
from racebench.workloads.counters import Check, Invariant
from racebench.workloads.custom.base import (
    CustomClient,
    CustomRun,
    generic_strategies,
    history_figures,
    pause_points,
)
from racebench.workloads.custom.expressions import Expression, ExpressionError, parse_expression
from racebench.workloads.custom.params import RESERVED_NAMES, draw_params, namespaced, parse_params

Arg = str | int | float
# Commands that only read: the race window is placed before the first step that is not one.
_READ_COMMANDS = frozenset(
    {"GET", "MGET", "EXISTS", "HGET", "HGETALL", "HMGET", "LLEN", "LRANGE", "SCARD", "SISMEMBER",
     "SMEMBERS", "ZCARD", "ZSCORE", "ZRANGE", "TTL", "PTTL", "STRLEN", "TYPE"}
)  # fmt: skip
# Redis replies to GET with bytes even for a counter; a whole number binds as an int so that
# `:count < 10` compares numbers, not strings ("9" < "10" is false).
_INTEGER = re.compile(r"^-?\d+$")
# What an invariant may read besides its reply: the run's operation counts.
FIGURE_NAMES = frozenset({"ok", "rejected", "unknown", "operations"})


class _Strict(BaseModel):
    # extra="forbid": a misspelt key in a template is an error, never a silently ignored step.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RedisStep(_Strict):
    """One command, or one Lua script, with an optional guard and the name of its reply."""

    command: list[Arg] | None = None
    script: str | None = None
    keys: list[Arg] = []
    args: list[Arg] = []
    bind: str | None = Field(default=None, alias="as")
    when: str | None = None
    # What a false `when` does: end the operation as rejected, or skip just this step.
    otherwise: Literal["reject", "skip"] = "reject"

    @model_validator(mode="after")
    def _one_kind(self) -> RedisStep:
        if (self.command is None) == (self.script is None):
            raise ValueError("give either command or script")
        if self.command is not None and not self.command:
            raise ValueError("command is empty")
        return self


class RedisInvariant(_Strict):
    """A command whose reply (`:result`) must equal `expect` or make `holds` true."""

    name: str = Field(min_length=1)
    command: list[Arg] = Field(min_length=1)
    expect: Arg | None = None
    holds: str | None = None

    @model_validator(mode="after")
    def _one_test(self) -> RedisInvariant:
        if (self.expect is None) == (self.holds is None):
            raise ValueError("give either expect or holds")
        return self


def _expression(where: str, text: str, bound: set[str]) -> Expression:
    """Parse an expression and check, at load time, that it reads only names bound so far."""
    try:
        expression = parse_expression(text)
    except ExpressionError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if unknown := sorted(expression.names - bound):
        raise ValueError(
            f"{where}: :{unknown[0]} is not bound here (bound: "
            + ", ".join(f":{n}" for n in sorted(bound))
            + "; a step binds its reply with `as: name`)"
        )
    return expression


def _check_args(where: str, args: list[Arg], bound: set[str]) -> None:
    """Check a command's `{{key:..}}` placeholders and `=` expressions before any client runs."""
    for i, arg in enumerate(args):
        if isinstance(arg, str):
            try:
                namespaced(arg, "key", lambda name: name, set())
            except ValueError as exc:
                raise ValueError(f"{where}[{i}]: {exc}") from None
            if arg.startswith("="):
                _expression(f"{where}[{i}]", arg[1:], bound)


class RedisTemplateWorkload(_Strict):
    """A user's own Redis commands or Lua: setup, an operation raced by clients, invariants."""

    type: Literal["redis"]
    description: str | None = None
    setup: list[list[Arg]] = []
    params: dict[str, Any] = {}
    operation: list[list[Arg] | RedisStep] = Field(min_length=1)
    invariants: list[RedisInvariant] = Field(min_length=1)
    claims_safe: bool = False

    operation_kind: ClassVar[str] = "operation"
    anomaly_names: ClassVar[tuple[str, ...]] = ()
    backends: ClassVar[tuple[str, ...]] = ("redis",)

    @property
    def steps(self) -> list[RedisStep]:
        """The operation's steps, a bare command list read as a step without options."""
        return [RedisStep(command=s) if isinstance(s, list) else s for s in self.operation]

    @model_validator(mode="after")
    def _check_names(self) -> RedisTemplateWorkload:
        try:
            parse_params(self.params)
        except ValueError as exc:
            raise ValueError(f"params: {exc}") from None
        for i, command in enumerate(self.setup):
            _check_args(f"setup[{i}]", command, set())
        # Names become bound in step order, so a step cannot read a reply bound after it.
        bound = set(self.params) | RESERVED_NAMES
        for i, step in enumerate(self.steps):
            where = f"operation[{i}]"
            if step.when is not None:
                _expression(f"{where}.when", step.when, bound)
            _check_args(where, [*(step.command or []), *step.keys, *step.args], bound)
            if step.bind is not None:
                bound.add(step.bind)
        for i, invariant in enumerate(self.invariants):
            # Invariants run after the race, where no step's reply is bound any more.
            figures = set(FIGURE_NAMES)
            _check_args(f"invariants[{i}].command", invariant.command, figures)
            if invariant.holds is not None:
                _expression(f"invariants[{i}].holds", invariant.holds, figures | {"result"})
        return self

    def strategies(self, backend: str) -> dict[str, StrategySpec]:
        return generic_strategies(self.type, self.claims_safe)

    def validate_run(self, fencing: bool, strategy: str) -> str | None:
        # Fencing without the token in a command would pass the token to nothing, and a
        # "fenced" run would be an unfenced one under another name.
        texts = [a for s in self.steps for a in (*(s.command or []), *s.args)]
        if fencing and not any(isinstance(a, str) and ":token" in a for a in texts):
            return "guard.fencing: the template must say where the token goes (=:token)"
        return None

    def start(
        self, backend: str, url: str | None, namespace: str, source: str, clients: int
    ) -> RedisRun:
        assert url is not None
        return RedisRun(self, url, namespace, source)


@dataclass(frozen=True)
class _Compiled:
    """A step with its keys namespaced and its `=` arguments parsed."""

    command: list[Arg | Expression]
    script: str | None
    keys: list[Arg | Expression]
    bind: str | None
    when: Expression | None
    skip_when_false: bool
    pause_before: bool


def _value(reply: Any) -> Any:
    """A reply as a bound value: text, an integer when it is a whole number, lists kept."""
    if isinstance(reply, bytes):
        reply = reply.decode(errors="replace")
    if isinstance(reply, str) and _INTEGER.match(reply):
        return int(reply)
    if isinstance(reply, list):
        return [_value(r) for r in reply]
    return reply


class RedisRun(CustomRun):
    """One trial: keys under the run's namespace, raced, checked and deleted."""

    def __init__(
        self, workload: RedisTemplateWorkload, url: str, namespace: str, source: str
    ) -> None:
        self.workload = workload
        self.url = url
        self.source = source
        self.prefix = f"racebench:{namespace}:"
        self.draws = parse_params(workload.params)
        self.steps: list[_Compiled] = []
        # A script counts as a write: Redis runs it whole, so it has no window inside.
        names = [str(s.command[0]).upper() if s.command else "EVAL" for s in workload.steps]
        reads = [name in _READ_COMMANDS for name in names]
        for step, pause in zip(workload.steps, pause_points(reads), strict=True):
            when = parse_expression(step.when) if step.when else None
            self.steps.append(
                _Compiled(
                    self._compile([*(step.command or []), *step.args]),
                    step.script,
                    self._compile(step.keys),
                    step.bind,
                    when,
                    step.otherwise == "skip",
                    pause,
                )
            )

    def _compile(self, args: list[Arg]) -> list[Arg | Expression]:
        """Expressions parsed once, keys prefixed with the run's namespace (so teardown finds
        every key by one pattern and parallel runs never share one)."""
        out: list[Arg | Expression] = []
        for arg in args:
            if isinstance(arg, str) and arg.startswith("="):
                out.append(parse_expression(arg[1:]))
            elif isinstance(arg, str):
                out.append(namespaced(arg, "key", lambda name: self.prefix + name, set()))
            else:
                out.append(arg)
        return out

    def _client(self) -> Any:
        from racebench.stores.redis import open_redis

        return open_redis(self.url)

    def setup(self) -> None:
        import redis

        client = self._client()
        try:
            for i, command in enumerate(self.workload.setup):
                try:
                    client.execute_command(*resolve(self._compile(command), {}))
                except redis.ResponseError as exc:
                    # A wrong command is the template's fault: exit 2 naming the step.
                    raise ScenarioError(
                        self.source, f"workload.setup[{i}]", f"Redis refused it: {exc}"
                    ) from None
        finally:
            client.close()

    def connect(self, options: ClientOptions) -> RedisTemplateClient:
        return RedisTemplateClient(self, options)

    def check(self, history: RunHistory) -> Check:
        import redis

        figures: dict[str, Any] = dict(history_figures(history))
        invariants: list[Invariant] = []
        anomalies: dict[str, int] = {}
        client = self._client()
        try:
            for i, inv in enumerate(self.workload.invariants):
                try:
                    reply = _value(
                        client.execute_command(*resolve(self._compile(inv.command), figures))
                    )
                except redis.ResponseError as exc:
                    raise ScenarioError(
                        self.source, f"workload.invariants[{i}].command", f"Redis refused it: {exc}"
                    ) from None
                if inv.holds is not None:
                    holds = bool(parse_expression(inv.holds).evaluate({**figures, "result": reply}))
                    detail = f"result {reply!r}, must satisfy {inv.holds}"
                else:
                    holds = reply == _value(inv.expect)
                    detail = f"result {reply!r}, expected {inv.expect!r}"
                invariants.append(Invariant(inv.name, holds, detail))
                # One final-state check: it fails once, however many operations broke it.
                anomalies[inv.name] = 0 if holds else 1
        finally:
            client.close()
        return Check(invariants, anomalies)

    def teardown(self) -> None:
        from racebench.stores.redis import delete_matching

        client = self._client()
        try:
            delete_matching(client, self.prefix + "*")
        finally:
            client.close()


def resolve(args: list[Arg | Expression], bound: dict[str, Any]) -> list[Any]:
    """Arguments with every expression evaluated against `bound`."""
    return [a.evaluate(bound) if isinstance(a, Expression) else a for a in args]


class RedisTemplateClient(CustomClient):
    """One client's Redis connection, running the compiled steps."""

    def __init__(self, run: RedisRun, options: ClientOptions) -> None:
        super().__init__(options)
        self.run = run
        self.client = run._client()

    def run_operation(self, seq: int, token: int | None) -> Outcome:
        import redis

        bound = draw_params(self.run.draws, self.options.client_id, seq)
        bound["token"] = token

        def execute(step: _Compiled) -> None:
            try:
                if step.script is not None:
                    keys = resolve(step.keys, bound)
                    argv = resolve(step.command, bound)
                    reply = self.client.eval(step.script, len(keys), *keys, *argv)
                else:
                    reply = self.client.execute_command(*resolve(step.command, bound))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The command may have reached Redis before the connection broke.
                raise UnknownOutcome(str(exc)) from exc
            if step.bind is not None:
                bound[step.bind] = _value(reply)

        return self.run_steps(self.run.steps, bound, execute)

    def classify(self, exc: BaseException) -> Outcome:
        return Outcome.UNKNOWN if isinstance(exc, UnknownOutcome) else Outcome.ERROR

    def close(self) -> None:
        self.client.close()
