"""``WorkflowEnvironment``: a user's App run in-process on the engine core, with a clock the test controls.

The same pure core as the processor decides everything: ``Decider`` for runs (``handle``, ``fire_timer``,
``timers_of``) and ``Router`` for the keyed stage (waits with keys, domain events, admission, schedules).
What the processor does with Kafka, this does with a queue: effects that would be produced to the inbox,
the keyed topic or a task topic are put on it and handled in order; step commands run the real step
functions (or a test's fakes) at once. Nothing happens by itself, so when the queue is empty the only way
forward is time: ``sleep`` moves the clock and fires what falls due on the way, and ``result`` skips ahead
to the next timer while the awaited run has not ended, so a 30-day sleep takes milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar, cast, overload

import pydantic_core
from confluent_kafka import Message

from orchestrator._core import formats
from orchestrator._core.effects import EncodedCommand
from orchestrator._core.instance_cache import InstanceCache
from orchestrator._engine import events as ev
from orchestrator._engine import state as st
from orchestrator._engine.decider import Decider, Effects, timers_of
from orchestrator._engine.events import Event
from orchestrator._engine.records import RunOutcome, StepCommand, decode_command
from orchestrator._engine.router import Router
from orchestrator._engine.sources import translate
from orchestrator._engine.store import PartitionStore
from orchestrator.app import App
from orchestrator.client import RunDescription
from orchestrator.context import WorkflowContext
from orchestrator.durations import Duration
from orchestrator.errors import RunFailedError, RunTimeoutError
from orchestrator.testing._clock import VirtualClock
from orchestrator.testing._handle import WorkflowHandle
from orchestrator.testing._messages import FakeMessage
from orchestrator.testing._steps import StepRunner
from orchestrator.testing._store import MemoryStore
from orchestrator.testing._waits import waiting_on
from orchestrator.triggers import extract

R = TypeVar("R")
InputT = TypeVar("InputT")

HOUSEKEEPING_TIMERS = frozenset({"tick", "expire", "idem-expire"})
"""Keyed-stage timers that time skipping leaves alone: schedule ticks (they would start runs forever) and
expiries (they unblock nothing). ``sleep`` fires them like any other; ticks that fell in time ``result``
skipped are then late, and the schedule's ``missed`` policy decides, as after a processor outage."""

MAX_SKIPS = 10_000
"""Times ``result`` skips to the next timer before it calls the run endless (a workflow sleeping in a
``while True`` loop would otherwise hang the test)."""

_IN_STEP: ContextVar[bool] = ContextVar("orchestrator_testing_in_step", default=False)
"""Set while this environment runs a step, whose code may call the environment back."""

_IDLE_YIELDS = 3
"""Event-loop turns ``result`` gives the test's other tasks (one about to signal, say) before it decides
that nothing will ever happen."""


class WorkflowEnvironment:
    """Runs an App's workflows and steps in this process, on a virtual clock; no broker, no disk.

    Use it as ``async with WorkflowEnvironment(app) as env:``. ``start_time`` fixes the clock's start
    (timezone-aware; default: now), so ``ctx.now()`` and schedules are reproducible. Schedules tick when
    ``sleep`` moves the clock, not while ``result`` skips time.
    """

    def __init__(self, app: App, *, start_time: datetime | None = None) -> None:
        self.app = app
        self._clock = VirtualClock(start_time)
        self._cache = InstanceCache()
        # A seeded generator: retry jitter, and so the times retries happen, are the same on every run.
        self._decider = Decider(app, self._cache, rng=random.Random(0))
        self._router = Router(app)
        self._keyed = MemoryStore()
        self._steps = StepRunner(app)
        self._states: dict[str, st.RunState] = {}
        self._histories: dict[str, list[Event]] = {}
        self._outcomes: dict[str, RunOutcome] = {}
        self._acks: dict[str, RunOutcome] = {}
        self._queue: deque[tuple[str, Any]] = deque()
        self._fired: set[tuple[int, str, str]] = set()
        self._offsets: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._progress = 0
        self.dead_letters: list[str] = []
        """Inputs the engine rejected (e.g. a result for a step the run never scheduled), with the reason."""
        self._register_schedules()

    async def __aenter__(self) -> WorkflowEnvironment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the workflow instances still in memory (their private event loops)."""
        self._cache.clear()

    # -- the clock ------------------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The environment's current (virtual) time."""
        return self._clock.now()

    async def sleep(self, duration: Duration) -> None:
        """Move the clock forward by ``duration``, firing every timer due on the way, each at its time."""
        await self._sleep_until_ms(self._clock.after(duration))

    async def sleep_until(self, when: datetime) -> None:
        """Move the clock forward to ``when`` (timezone-aware), firing every timer due on the way."""
        if when.tzinfo is None:
            raise ValueError("sleep_until needs a timezone-aware datetime")
        await self._sleep_until_ms(int(when.timestamp() * 1000))

    async def _sleep_until_ms(self, target_ms: int) -> None:
        _not_in_a_step("env.sleep")
        async with self._lock:
            await self._drain()
            while (due := self._next_due(skipping=False)) is not None and due <= target_ms:
                await self._fire_due(due, skipping=False)
            self._clock.move_to(target_ms)

    # -- requests, as the client sends them -----------------------------------------------------------------
    @overload
    async def start(
        self,
        workflow: Callable[[WorkflowContext, InputT], Awaitable[R]],
        input: InputT,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> WorkflowHandle[R]: ...

    @overload
    async def start(
        self,
        workflow: Callable[[WorkflowContext], Awaitable[R]],
        input: None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> WorkflowHandle[R]: ...

    @overload
    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> WorkflowHandle[Any]: ...

    async def start(
        self,
        workflow: Callable[..., Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> WorkflowHandle[Any]:
        """Start a run (``run_id`` default: ``<workflow>-<n>``); the same run id twice is one run.

        As with the client, a workflow with an ``Admission`` or a start with ``idempotency_key`` goes
        through the keyed stage: a duplicate key within the window returns the first run's handle.
        """
        name = workflow if isinstance(workflow, str) else self.app.workflow_name(workflow)
        run_id = run_id or f"{name}-{next(self._ids)}"
        data = self.app.data.encode(input, what=f"input of workflow {name!r}")
        definition = self.app.workflows.get(name)
        admission = definition.admission if definition is not None else None
        now = self._clock.now_ms
        if admission is not None or idempotency_key:
            key = str(extract(input, admission.key)) if admission is not None and admission.key else ""
            priority = (
                float(admission.priority(input)) if admission is not None and admission.priority else 0.0
            )
            request = ev.AdmitRequest(name, run_id, data, key, priority, idempotency_key or "", "client")
            await self._submit(("keyed", Event(self._event_id(), run_id, name, now, request)))
            ack = self._acks.pop(run_id, None)
            if ack is not None and ack.status == "duplicate":
                return WorkflowHandle(self, pydantic_core.from_json(ack.result or b'""'), name)
            return WorkflowHandle(self, run_id, name)
        start = ev.StartRun(input=data, requested_by="client")
        await self._submit(("inbox", Event(self._event_id(), run_id, name, now, start)))
        return WorkflowHandle(self, run_id, name)

    def get_handle(self, run_id: str, workflow: str | None = None) -> WorkflowHandle[Any]:
        return WorkflowHandle(self, run_id, workflow)

    async def signal(self, run_id: str, name: str, payload: Any = None, *, key: str = "") -> None:
        """Send an event to one run; kept in the run until a ``ctx.wait_for_event(name)`` takes it."""
        data = self.app.data.encode(payload, what=f"payload of signal {name!r}")
        await self._request(run_id, ev.Signal(name=name, key=key, payload=data, source="client"))

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        await self._request(run_id, ev.CancelRun(reason=reason, requested_by="client"))

    async def resume(self, run_id: str, reason: str = "resumed by an operator") -> None:
        """Resume a parked run (e.g. after ``mock_step`` fixed what parked it)."""
        await self._request(run_id, ev.ResumeRun(reason, -1))

    async def rerun(
        self, run_id: str, from_position: int | None = None, reason: str = "re-run by an operator"
    ) -> None:
        """Re-run a failed run from its failed step (or ``from_position``), keeping earlier results."""
        await self._request(run_id, ev.ResumeRun(reason, -1 if from_position is None else from_position))

    async def emit(
        self, topic: str, value: Any, *, key: bytes | str | None = None, partition: int = 0
    ) -> None:
        """A record on one of your topics, through the app's triggers and event sources, as a processor
        would consume it. ``value`` is sent as JSON unless it is ``bytes`` (e.g. Avro)."""
        if topic not in self.app.source_topics:
            known = ", ".join(sorted(self.app.source_topics)) or "none"
            raise ValueError(f"no trigger or event source of app {self.app.name!r} reads {topic!r} ({known})")
        raw = value if isinstance(value, bytes) else pydantic_core.to_json(value)
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        raw_key = key.encode() if isinstance(key, str) else key
        msg = FakeMessage(topic, partition, offset, raw, raw_key)
        routed = translate(self.app, cast(Message, msg), self._clock.now_ms)
        await self._submit(*(("inbox" if r.routing is None else "keyed", r.event) for r in routed))

    # -- steps ----------------------------------------------------------------------------------------------
    def mock_step(self, step: Callable[..., Any] | str, fake: Callable[..., Any]) -> None:
        """Run ``fake`` (sync or async, the step's arguments) instead of ``step``'s function.

        The step keeps its retry policy and timeout: a fake that raises is retried like the real step, and
        ``TerminalError`` fails it at once.
        """
        self._steps.mock(step, fake)

    def unmock_step(self, step: Callable[..., Any] | str) -> None:
        self._steps.unmock(step)

    # -- looking --------------------------------------------------------------------------------------------
    def history(self, run_id: str) -> list[Event]:
        """Every event of the run so far, in order: what the history topic would hold."""
        self._known(run_id)
        return list(self._histories.get(run_id, []))

    def status(self, run_id: str) -> str | None:
        """``running``, ``completed``, ``failed``, ``cancelled``, ``parked``, ... (None: not started)."""
        state = self._states.get(run_id)
        return state.status if state is not None else None

    def describe(self, run_id: str) -> RunDescription | None:
        """The run as a processor would have committed it (what ``client.describe`` returns)."""
        state = self._states.get(run_id)
        return RunDescription.from_state(state) if state is not None else None

    def run_ids(self) -> list[str]:
        """Every run started in this environment, in start order."""
        return list(self._states)

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """See ``WorkflowHandle.result``."""
        outcome = await self._await_outcome(run_id, timeout)
        if outcome.status != st.COMPLETED:
            raise RunFailedError(outcome.run_id, outcome.status, outcome.error_type, outcome.error_message)
        definition = self.app.workflows.get(outcome.workflow)
        hint = definition.return_hint if definition else None
        return self.app.data.decode(outcome.result or b"null", hint)

    # -- the loop -------------------------------------------------------------------------------------------
    async def _await_outcome(self, run_id: str, timeout: float | None) -> RunOutcome:
        _not_in_a_step("a run's result()")
        limit = None if timeout is None else self._clock.now_ms + int(timeout * 1000)
        skips = 0
        while True:
            async with self._lock:
                await self._drain()
                outcome = self._final_outcome(run_id)
                if outcome is not None:
                    return outcome
                progress = self._progress
            # Nothing is left to handle now. Before moving time, let the test's other tasks run: one may be
            # about to send what the run waits for (a signal must beat the wait's timeout, as it would live).
            for _ in range(_IDLE_YIELDS):
                await asyncio.sleep(0)
            if self._progress != progress:
                continue
            async with self._lock:
                due = self._next_due(skipping=True)
                if due is not None and (limit is None or due <= limit) and not self._queue:
                    skips += 1
                    if skips > MAX_SKIPS:
                        raise RunTimeoutError(
                            f"run {run_id!r} has not ended after {MAX_SKIPS} skips to the next timer "
                            f"(virtual time {self.now().isoformat()}): does it loop forever? Pass a timeout."
                        )
                    await self._fire_due(due, skipping=True)
                    continue
            if self._queue:
                continue
            if limit is not None:
                self._clock.move_to(limit)
                raise RunTimeoutError(
                    f"run {run_id!r} did not end within {timeout}s of virtual time: "
                    f"{waiting_on(self._states.get(run_id))}"
                )
            raise RunTimeoutError(
                f"run {run_id!r} can never end: {waiting_on(self._states.get(run_id))}, and no timer is "
                "left to fire. Send it with env.signal or env.emit before awaiting the result."
            )

    def _final_outcome(self, run_id: str) -> RunOutcome | None:
        state = self._states.get(run_id)
        if state is None:
            rejected = self._outcomes.get(run_id)  # refused by admission (rate limit with mode "drop")
            return rejected if rejected is not None and rejected.status == "rejected" else None
        if not (state.terminal or state.status == st.PARKED):
            return None
        last = self._outcomes.get(run_id)
        if last is not None and last.status == state.status:
            return last
        return RunOutcome(
            run_id,
            state.workflow,
            state.status,
            state.updated_ms,
            state.result,
            state.error_type,
            state.error_message,
        )

    async def _drain(self) -> None:
        """Handle queued work until there is none; steps run as their commands come up."""
        while self._queue:
            kind, item = self._queue.popleft()
            self._progress += 1
            if kind == "inbox":
                self._handle(item)
            elif kind == "keyed":
                self._routed(self._router.handle(self._keyed_store, item, self._clock.now_ms))
            else:
                await self._execute(item)

    def _handle(self, event: Event) -> None:
        state = self._states.get(event.run_id)
        new_state, fx = self._decider.handle(state, event, self._clock.now_ms)
        if new_state is not None:
            self._states[new_state.run_id] = new_state
        if fx.dead_letter:
            self.dead_letters.append(f"{event.kind} for {event.run_id!r}: {fx.dead_letter}")
        self._emit(fx)

    async def _execute(self, cmd: StepCommand) -> None:
        if cmd.cancel:
            return  # attempts take no virtual time: none is ever running when its run is cancelled
        if cmd.report_start:
            self._handle(self._steps.started(cmd, self._clock.now_ms))
        token = _IN_STEP.set(True)
        try:
            result = await self._steps.run(cmd, self._clock.now_ms)
        finally:
            _IN_STEP.reset(token)
        self._queue.append(("inbox", result))

    def _emit(self, fx: Effects) -> None:
        for event in fx.history:
            self._histories.setdefault(event.run_id, []).append(event)
        for outcome in fx.outcomes:
            self._outcomes[outcome.run_id] = outcome
        self._queue.extend(("command", _decoded(cmd)) for _, cmd in fx.commands)
        self._queue.extend(("keyed", event) for _, event in fx.keyed)
        self._queue.extend(("inbox", event) for event in fx.inbox)

    def _routed(self, fx: Effects) -> None:
        for outcome in fx.outcomes:
            if outcome.status in ("accepted", "duplicate"):
                self._acks[outcome.run_id] = outcome
            else:
                self._outcomes[outcome.run_id] = outcome
        self._queue.extend(("inbox", event) for event in fx.inbox)
        self._queue.extend(("keyed", event) for _, event in fx.keyed)
        self._queue.extend(("command", _decoded(cmd)) for _, cmd in fx.commands)

    # -- timers ---------------------------------------------------------------------------------------------
    def _timers(self, skipping: bool) -> list[tuple[int, str, str, bytes | None]]:
        """(due ms, run id or ident, tag, keyed-store key or None) of every timer not fired yet."""
        out: list[tuple[int, str, str, bytes | None]] = []
        for run_id, state in self._states.items():
            for due, tag in timers_of(state):
                if (due, run_id, tag) not in self._fired:
                    out.append((due, run_id, tag, None))
        for key, due, ident, tag in self._keyed.timers():
            if not (skipping and tag in HOUSEKEEPING_TIMERS):
                out.append((due, ident, tag, key))
        return out

    def _next_timer(self, skipping: bool) -> tuple[int, str, str, bytes | None] | None:
        timers = self._timers(skipping)
        return min(timers, key=lambda t: (t[0], t[1], t[2])) if timers else None

    def _next_due(self, skipping: bool) -> int | None:
        timer = self._next_timer(skipping)
        return timer[0] if timer is not None else None

    async def _fire_due(self, due_ms: int, skipping: bool) -> None:
        """Move the clock to ``due_ms`` and fire every timer due by then, oldest first.

        The next timer is looked up again after each one: what a timer sets off may clear or add others.
        """
        self._clock.move_to(due_ms)
        while (timer := self._next_timer(skipping)) is not None and timer[0] <= due_ms:
            due, ident, tag, key = timer
            if key is None:
                self._fired.add((due, ident, tag))
                self._emit(self._decider.fire_timer(self._states[ident], tag, self._clock.now_ms))
            else:
                self._keyed.delete(key)
                self._routed(self._router.fire_timer(self._keyed_store, ident, tag, self._clock.now_ms))
            await self._drain()

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def _keyed_store(self) -> PartitionStore:
        # The router is typed against the RocksDB store; the in-memory one has every method it calls.
        return cast(PartitionStore, self._keyed)

    async def _request(self, run_id: str, body: ev.Body) -> None:
        self._known(run_id)
        await self._submit(("inbox", Event(self._event_id(), run_id, "", self._clock.now_ms, body)))

    async def _submit(self, *work: tuple[str, Any]) -> None:
        """Queue ``work`` and handle everything that follows from it.

        From inside a step this environment is running (a fake that signals another run, say), the work is
        only queued: the drain that runs the step handles it next, as Kafka would deliver it.
        """
        if _IN_STEP.get():
            self._queue.extend(work)
            return
        async with self._lock:
            self._queue.extend(work)
            await self._drain()

    def _known(self, run_id: str) -> None:
        if run_id not in self._states:
            known = ", ".join(self._states) or "none"
            raise ValueError(f"no run {run_id!r} in this test environment (runs: {known})")

    def _event_id(self) -> str:
        return f"testing/{next(self._ids)}"

    def _register_schedules(self) -> None:
        """Declare the app's schedules to the keyed stage, as a starting processor does."""
        for schedule in self.app.schedules.values():
            body = ev.ScheduleRegister(schedule.workflow, schedule.cron, schedule.timezone, schedule.missed)
            event_id = formats.schedule_register_id(schedule.workflow)
            event = Event(event_id, "", schedule.workflow, self._clock.now_ms, body)
            self._routed(self._router.handle(self._keyed_store, event, self._clock.now_ms))


def _not_in_a_step(what: str) -> None:
    if _IN_STEP.get():
        raise RuntimeError(
            f"{what} cannot be awaited inside a step: the environment is running that step and would wait "
            "for itself. Signal, cancel, start or emit from a step instead; await results in the test."
        )


def _decoded(cmd: StepCommand | EncodedCommand) -> StepCommand:
    """The command a worker would read: admitted step attempts arrive in their wire form."""
    return decode_command(cmd.value) if isinstance(cmd, EncodedCommand) else cmd
