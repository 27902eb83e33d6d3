"""What handling one input produced: the one effects type of the decider, the keyed stage and the output.

The decider (a run's inputs and timers), the keyed stage's router and admission stage (waits, domain
events, schedules, admission) all answer an input with records to produce in the current transaction and,
when the input changed nothing, why. One type for all of them means one way to size-check and produce
them (the processor's output) and one set of reasons: ``ignored`` (normal, logged at debug level) and
``dead_letter`` (the record makes no sense here: it is kept in the DLQ for an operator).

`StepCommand` and `RunOutcome` are defined here (and re-exported by ``orchestrator._engine.records``,
which adds their wire encoding) because the core builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator._core.events import Event


@dataclass(frozen=True, slots=True)
class StepCommand:
    run_id: str
    workflow: str
    position: int
    step: str
    attempt: int
    args: bytes
    idempotency_key: str
    scheduled_ms: int
    timeout_ms: int = 0
    report_start: bool = False
    cancel: bool = False
    schedule_to_start_ms: int = 0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    workflow: str
    status: str
    timestamp_ms: int
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class EncodedCommand:
    """A step command already in its wire form: the one an admitted step attempt carried inside its
    ``AdmitRequest``. The admission stage forwards it as it is; the core has no wire format to decode it
    with, and need not: only the workers read it."""

    run_id: str  # the record's key
    value: bytes


@dataclass
class Effects:
    """What handling one input produced, to be written in the current transaction.

    From the decider, ``history`` is what it decided; every other list except replies to requests that
    changed nothing (a duplicate start, a cancel of an ended run) is derived from those events
    (``commands.py``). The keyed stage records no history.
    """

    history: list[Event] = field(default_factory=list)
    commands: list[tuple[str, StepCommand | EncodedCommand]] = field(default_factory=list)  # (queue, command)
    outcomes: list[RunOutcome] = field(default_factory=list)
    keyed: list[tuple[str, Event]] = field(default_factory=list)  # (routing key, event) for the keyed stage
    inbox: list[Event] = field(default_factory=list)  # requests to other runs (children, parents)
    ignored: str = ""  # why the input changed nothing (duplicate, stale attempt: normal under at-least-once)
    dead_letter: str = ""  # why the input makes no sense here (unknown run, ...): kept for an operator

    def extend(self, other: Effects) -> None:
        self.history.extend(other.history)
        self.commands.extend(other.commands)
        self.outcomes.extend(other.outcomes)
        self.keyed.extend(other.keyed)
        self.inbox.extend(other.inbox)
