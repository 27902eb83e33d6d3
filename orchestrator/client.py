"""The client: start runs (idempotently by run id), await their results, look at their state.

Results arrive on the outcomes topic, which a background thread tails from the moment the client is
first used; a handle whose run may have ended earlier asks the changelog first. The client never talks to a
processor directly: Kafka is the only thing between them.

Records the client cannot read (junk bytes, a schema id from a newer engine, a record of the wrong type, a
schedule that is not the router's JSON) never end a call: see `Client` for how they are reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast, overload

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from orchestrator import topology
from orchestrator._core import formats
from orchestrator._engine import access, audit, kafka, tracing, wire
from orchestrator._engine.access import KafkaAccessError
from orchestrator._engine.admission import admit_routing, idempotency_routing
from orchestrator._engine.events import (
    AdmitRequest,
    CancelRun,
    Event,
    ResumeRun,
    SchedulePause,
    Signal,
    StartRun,
    encode_event,
)
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.records import RunOutcome, decode_outcome
from orchestrator._engine.state import (
    COMPLETED,
    PARKED,
    TERMINAL,
    ChildRecord,
    CommandRecord,
    RunState,
    StepRecord,
    attempts_of,
)
from orchestrator._engine.unreadable import OnUnreadable as OnUnreadable
from orchestrator._engine.unreadable import Unreadable as Unreadable
from orchestrator._engine.unreadable import Where as Where
from orchestrator._engine.unreadable import unreadable
from orchestrator.app import App
from orchestrator.context import WorkflowContext
from orchestrator.errors import OrchestratorError, RunFailedError, RunTimeoutError
from orchestrator.settings import Settings
from orchestrator.triggers import extract

log = logging.getLogger("orchestrator.client")

R = TypeVar("R")
InputT = TypeVar("InputT")


@dataclass(frozen=True)
class StepView:
    position: int
    step: str
    status: str
    attempts: int
    started: datetime | None
    finished: datetime | None
    error: str
    attempt_errors: tuple[str, ...]

    @property
    def duration_ms(self) -> int | None:
        if self.started and self.finished:
            return int((self.finished - self.started).total_seconds() * 1000)
        return None


@dataclass(frozen=True)
class RunDescription:
    """A run as its processor last committed it."""

    run_id: str
    workflow: str
    status: str
    created: datetime
    updated: datetime
    steps: tuple[StepView, ...]
    error_type: str
    error_message: str
    result_bytes: bytes | None

    @classmethod
    def from_state(cls, s: RunState) -> RunDescription:
        steps = tuple(_step_view(r) for r in s.steps)
        return cls(
            s.run_id,
            s.workflow,
            s.status,
            _dt(s.created_ms),
            _dt(s.updated_ms),
            steps,
            s.error_type,
            s.error_message,
            s.result,
        )


def _step_view(r: CommandRecord) -> StepView:
    attempt, attempts = attempts_of(r)
    ran = r if isinstance(r, StepRecord | ChildRecord) else None  # the kinds that can fail
    error = f"{ran.error_type}: {ran.error_message}" if ran is not None and ran.error_type else ""
    return StepView(
        position=r.position,
        step=r.name,
        status=r.status,
        attempts=attempt,
        started=_dt(attempts[0].started_ms) if attempts else None,
        finished=_dt(attempts[-1].finished_ms) if attempts else None,
        error=error,
        attempt_errors=tuple(f"#{a.attempt} {a.error_type}: {a.message}" for a in attempts if a.error_type),
    )


class RunHandle(Generic[R]):
    """A started (or looked-up) run. ``R`` is the workflow's result type when the handle came from
    ``client.start(wf, ...)``; a handle made from a run id alone is ``RunHandle[Any]``."""

    def __init__(self, client: Client, run_id: str, workflow: str | None) -> None:
        self.client = client
        self.run_id = run_id
        self.workflow = workflow

    async def result(self, timeout: float | None = None) -> R:
        """The run's return value; RunFailedError if it failed or was parked, RunTimeoutError on timeout.

        The value is decoded with the workflow's return annotation, which is what ``R`` was taken from.
        """
        outcome = await self.client._await_outcome(self.run_id, timeout)
        return cast(R, self.client._outcome_value(outcome))

    async def describe(self, *, on_unreadable: OnUnreadable | None = None) -> RunDescription | None:
        """See `Client.describe`."""
        return await self.client.describe(self.run_id, on_unreadable=on_unreadable)

    async def signal(self, name: str, payload: Any = None, *, key: str = "") -> None:
        await self.client.signal(self.run_id, name, payload, key=key)

    async def cancel(self, reason: str = "cancelled by request") -> None:
        await self.client.cancel(self.run_id, reason)


def _log_unreadable(bad: Unreadable) -> None:
    log.warning("skipped unreadable record %s", bad)


class Client:
    """Starts runs, signals and cancels them, awaits their results and reads their state from Kafka.

    **Unreadable records.** The reads (`describe`, `list_runs`, `list_schedules`, `cancel_many`, and the
    outcomes a waiting `RunHandle.result` tails) decode Kafka records themselves, so a record written by a
    newer engine version or by a stray producer is a fact of life, not a bug in the caller. One such record
    never ends a call: it is reported as an `Unreadable` (topic, partition, offset, key, a short reason and
    a detail: enough to fetch it with any Kafka tool) and the call answers with everything else. A user of
    Temporal's or Restate's client expects a list call to return the list, and a lookup to return the
    thing or nothing, rather than to fail for the sake of one other record; so the return types stay plain
    (no result wrapper to unpack on every call), and what was skipped goes to a callback:

    - ``on_unreadable`` given to a call, else the one given to the client, gets each record as it is met
      (e.g. a `list.append`, a metrics counter). It is the same callback the audit library takes, so a
      tool can collect one report over client and audit reads alike. A callback that raises ends the
      read with its exception: the way to ask for all or nothing. The client's callback also gets the
      outcome records its results watcher skips, on that watcher's thread; there an exception is logged
      instead, since the other results it waits for must still arrive.
    - Without either, each record is logged as a warning on the ``orchestrator.client`` logger, once per
      record. Not `warnings.warn`: that shows a message once per call site (not per record), and test
      suites commonly turn warnings into errors, which would make one bad record crash the caller again.

    What is left out: `list_runs` and `cancel_many` leave out runs whose latest state is unreadable (their
    workflow and status are unknown, so a bulk cancel does not touch them); `describe` answers None for
    such a run; `list_schedules` leaves out the record. A waiting `result()` skips an unreadable outcome
    record and keeps waiting for its run's real one.
    """

    def __init__(self, app: App, *, on_unreadable: OnUnreadable | None = None) -> None:
        self.app = app
        self._on_unreadable: OnUnreadable = on_unreadable if on_unreadable is not None else _log_unreadable
        self._inbox = topology.inbox_topic(app.name)
        self._outcomes_topic = topology.outcomes_topic(app.name)
        self._producer: Producer | None = None
        self._watcher: _OutcomeWatcher | None = None
        self._lock = threading.Lock()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- starting -----------------------------------------------------------------------------------------
    @overload
    async def start(
        self,
        workflow: Callable[[WorkflowContext, InputT], Awaitable[R]],
        input: InputT,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> RunHandle[R]: ...

    @overload
    async def start(
        self,
        workflow: Callable[[WorkflowContext], Awaitable[R]],
        input: None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> RunHandle[R]: ...

    @overload
    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> RunHandle[Any]: ...

    async def start(
        self,
        workflow: Callable[..., Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> RunHandle[Any]:
        """Start a run. The same ``run_id`` twice gives one run; the second start returns its handle.

        With ``idempotency_key``, a second start with the same key within the workflow's
        ``idempotency_window`` (from any client) returns the handle of the first run instead of starting
        another. Workflows with an ``Admission`` are started through it (they may wait for a slot).

        Typing: ``input`` is checked against the workflow's input parameter (omitted for a workflow that
        takes only ``ctx``) and the handle's ``result()`` has its return type. By name, both are unchecked.

        Traced (OpenTelemetry, a no-op without an SDK): a ``start`` span in the run's own trace, linked to
        the caller's current span (docs/tracing.md).
        """
        name = workflow if isinstance(workflow, str) else self.app.workflow_name(workflow)
        run_id = run_id or uuid.uuid4().hex
        with tracing.client_start_span(run_id, name, self._inbox):
            return await self._start(
                workflow, input, run_id=run_id, idempotency_key=idempotency_key, timeout=timeout
            )

    async def _start(
        self,
        workflow: Callable[..., Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> RunHandle[Any]:
        """`start` inside its span."""
        name = workflow if isinstance(workflow, str) else self.app.workflow_name(workflow)
        run_id = run_id or uuid.uuid4().hex
        data = self.app.data.encode(input, what=f"input of workflow {name!r}")
        watcher = await asyncio.to_thread(self._ensure_watcher)
        loop = asyncio.get_running_loop()
        watcher.expect(run_id, loop, starting=True)
        definition = self.app.workflows.get(name)
        admission = definition.admission if definition is not None else None
        if admission is not None or idempotency_key:
            key = str(extract(input, admission.key)) if admission is not None and admission.key else ""
            priority = (
                float(admission.priority(input)) if admission is not None and admission.priority else 0.0
            )
            request = AdmitRequest(name, run_id, data, key, priority, idempotency_key or "", "client")
            routing = (
                idempotency_routing(name, idempotency_key) if idempotency_key else admit_routing(name, key)
            )
            ack = watcher.expect_ack(run_id, loop) if idempotency_key else None
            event = Event(uuid.uuid4().hex, run_id, name, int(time.time() * 1000), request)
            await self._produce(event, topic=topology.keyed_topic(self.app.name), key=routing)
            if ack is not None:
                outcome = await asyncio.wait_for(ack, timeout)
                if outcome.status == "duplicate":
                    watcher.forget(run_id)
                    existing = json.loads(outcome.result or b'""')
                    watcher.expect(existing, loop)
                    return RunHandle(self, existing, name)
            return RunHandle(self, run_id, name)
        event = Event(
            event_id=uuid.uuid4().hex,
            run_id=run_id,
            workflow=name,
            timestamp_ms=int(time.time() * 1000),
            body=StartRun(input=data, requested_by="client"),
        )
        await self._produce(event)
        return RunHandle(self, run_id, name)

    async def signal(self, run_id: str, name: str, payload: Any = None, *, key: str = "") -> None:
        """Send an event to one run. Kept in the run until a ``ctx.wait_for_event(name)`` takes it."""
        data = self.app.data.encode(payload, what=f"payload of signal {name!r}")
        body = Signal(name=name, key=key, payload=data, source="client")
        await self._produce(Event(uuid.uuid4().hex, run_id, "", int(time.time() * 1000), body))

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        """Cancel a run: it ends as cancelled, its timers and waits are cleared, running steps are told."""
        body = CancelRun(reason=reason, requested_by="client")
        await self._produce(Event(uuid.uuid4().hex, run_id, "", int(time.time() * 1000), body))

    async def resume(self, run_id: str, reason: str = "resumed by an operator") -> None:
        """Resume a parked run (after deploying a fix); it parks again if the code still diverges."""
        await self._produce(
            Event(uuid.uuid4().hex, run_id, "", int(time.time() * 1000), ResumeRun(reason, -1))
        )

    async def rerun(
        self, run_id: str, from_position: int | None = None, reason: str = "re-run by an operator"
    ) -> None:
        """Re-run a failed run from its failed step (or ``from_position``), keeping every earlier result."""
        body = ResumeRun(reason, -1 if from_position is None else from_position)
        await self._produce(Event(uuid.uuid4().hex, run_id, "", int(time.time() * 1000), body))

    async def cancel_many(
        self,
        *,
        workflow: str | None = None,
        status: str = "running",
        reason: str = "bulk cancel",
        on_unreadable: OnUnreadable | None = None,
    ) -> list[str]:
        """Cancel every run matching the filter; returns the run ids asked to cancel.

        A run whose latest state is unreadable is not cancelled (whether it matches the filter is unknown):
        it goes to ``on_unreadable`` (see `Client`), so it can be checked and cancelled by id.
        """
        runs = await self.list_runs(workflow=workflow, status=status, on_unreadable=on_unreadable)
        for run in runs:
            await self.cancel(run.run_id, reason)
        return [r.run_id for r in runs]

    async def pause_schedule(self, workflow: str, paused: bool = True) -> None:
        """Pause (or resume) a workflow's schedule; ticks while paused start nothing."""
        routing = formats.schedule_routing(workflow)
        body = SchedulePause(workflow=workflow, paused=paused)
        event = Event(uuid.uuid4().hex, "", workflow, int(time.time() * 1000), body)
        await self._produce(event, topic=topology.keyed_topic(self.app.name), key=routing)

    async def list_schedules(self, *, on_unreadable: OnUnreadable | None = None) -> list[dict[str, Any]]:
        """Every schedule as the keyed stage holds it: cron, timezone, missed policy, next tick, paused.

        A schedule record that is not the keyed stage's JSON goes to ``on_unreadable`` (see `Client`).
        """
        return await asyncio.to_thread(audit.schedules, self.app, on_unreadable=self._report(on_unreadable))

    @overload
    def get_handle(self, run_id: str, workflow: Callable[..., Awaitable[R]]) -> RunHandle[R]: ...

    @overload
    def get_handle(self, run_id: str, workflow: str | None = None) -> RunHandle[Any]: ...

    def get_handle(self, run_id: str, workflow: Callable[..., Any] | str | None = None) -> RunHandle[Any]:
        """A handle on an existing run, e.g. one started elsewhere or a detached child.

        Given the workflow function (rather than its name), the handle is typed by its result, so
        ``await client.get_handle(run_id, wf).result()`` has ``wf``'s return type.
        """
        name = workflow if workflow is None or isinstance(workflow, str) else self.app.workflow_name(workflow)
        return RunHandle(self, run_id, name)

    async def _produce(self, event: Event, *, topic: str | None = None, key: str | None = None) -> None:
        producer = self._ensure_producer()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def delivered(err: Any, _msg: Any) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(OrchestratorError(f"could not write to {self._inbox}: {err}"))

            loop.call_soon_threadsafe(settle)

        routing = key if key is not None else event.run_id
        headers = tracing.inject()  # the caller's span (the start span in start()), as W3C traceparent
        producer.produce(
            topic or self._inbox,
            encode_event(event),
            routing.encode(),
            partition=partition_for(routing, self.app.settings.partitions),
            on_delivery=delivered,
            headers=headers or None,
        )
        producer.poll(0)
        await done

    def _ensure_producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = kafka.new_producer(kafka.producer_config(self.app.settings))
                threading.Thread(target=self._poll_loop, daemon=True, name="orchestrator-client-poll").start()
            return self._producer

    def _poll_loop(self) -> None:
        while self._producer is not None:
            self._producer.poll(0.05)

    def _ensure_watcher(self) -> _OutcomeWatcher:
        with self._lock:
            if self._watcher is None:
                kafka.ensure_topics(self.app)
                self._watcher = _OutcomeWatcher(
                    self.app.settings, self._outcomes_topic, self.app.settings.partitions, self._on_unreadable
                )
            return self._watcher

    # -- results ------------------------------------------------------------------------------------------
    async def _await_outcome(self, run_id: str, timeout: float | None) -> RunOutcome:
        watcher = await asyncio.to_thread(self._ensure_watcher)
        fut = watcher.expect(run_id, asyncio.get_running_loop())
        unreadable_state: list[Unreadable] = []
        if not fut.done() and not watcher.started_here(run_id):

            def note(bad: Unreadable) -> None:
                unreadable_state.append(bad)
                self._on_unreadable(bad)

            # An unreadable state cannot say whether the run has ended: wait for its outcome meanwhile.
            desc = await asyncio.to_thread(self._read_state, run_id, note)
            if desc is not None and (desc.status in TERMINAL or desc.status == PARKED):
                watcher.forget(run_id)
                return RunOutcome(
                    desc.run_id,
                    desc.workflow,
                    desc.status,
                    desc.updated_ms,
                    desc.result,
                    desc.error_type,
                    desc.error_message,
                )
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            state = unreadable_state[0] if unreadable_state else None
            raise RunTimeoutError(_timed_out(run_id, timeout, state, watcher.skipped(run_id))) from None
        finally:
            if fut.done():
                watcher.forget(run_id)

    def _outcome_value(self, outcome: RunOutcome) -> Any:
        if outcome.status != COMPLETED:
            raise RunFailedError(outcome.run_id, outcome.status, outcome.error_type, outcome.error_message)
        definition = self.app.workflows.get(outcome.workflow)
        hint = definition.return_hint if definition else None
        return self.app.data.decode(outcome.result or b"null", hint)

    # -- looking --------------------------------------------------------------------------------------------
    async def describe(
        self, run_id: str, *, on_unreadable: OnUnreadable | None = None
    ) -> RunDescription | None:
        """The run as its processor last committed it; None when there is no such run, or when its latest
        state record is unreadable (then reported to ``on_unreadable``, see `Client`)."""
        state = await asyncio.to_thread(self._read_state, run_id, self._report(on_unreadable))
        return RunDescription.from_state(state) if state else None

    async def list_runs(
        self,
        workflow: str | None = None,
        status: str | None = None,
        *,
        on_unreadable: OnUnreadable | None = None,
    ) -> list[RunDescription]:
        """Every run (of ``workflow``, in ``status``) as last committed, oldest first.

        A run whose latest state record is unreadable is left out and reported to ``on_unreadable`` (see
        `Client`).
        """
        return await asyncio.to_thread(self._list_runs, workflow, status, self._report(on_unreadable))

    def _report(self, on_unreadable: OnUnreadable | None) -> OnUnreadable:
        return on_unreadable if on_unreadable is not None else self._on_unreadable

    def _read_state(self, run_id: str, on_unreadable: OnUnreadable) -> RunState | None:
        return audit.live_state(self.app, run_id, on_unreadable=on_unreadable)

    def _list_runs(
        self, workflow: str | None, status: str | None, on_unreadable: OnUnreadable
    ) -> list[RunDescription]:
        runs = [
            RunDescription.from_state(s)
            for s in audit.live_states(self.app, on_unreadable=on_unreadable).values()
            if (workflow is None or s.workflow == workflow) and (status is None or s.status == status)
        ]
        runs.sort(key=lambda r: r.created)
        return runs

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await asyncio.to_thread(watcher.close)
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, 10)


class _OutcomeWatcher:
    """Tails the outcomes topic from where it stood when created, settling the futures of awaited runs.

    A record of an awaited run that does not decode is reported to ``on_unreadable`` and skipped: the run's
    real outcome comes later on the same partition, and every waiting client still gets it. Should the
    thread itself fail (the consumer, not a record), the waiting futures fail with the reason instead of
    hanging until their timeouts.
    """

    def __init__(self, settings: Settings, topic: str, partitions: int, on_unreadable: OnUnreadable) -> None:
        self._on_unreadable = on_unreadable
        self._settings, self._topic = settings, topic
        self._group = kafka.reader_config(settings)["group.id"]  # named when its ACL is missing
        self._consumer = kafka.new_consumer(
            kafka.reader_config(
                settings, **{"enable.partition.eof": False, "fetch.wait.max.ms": kafka.TAIL_FETCH_WAIT_MS}
            )
        )
        tps = []
        for p in range(partitions):
            _, high = kafka.watermarks(self._consumer, TopicPartition(topic, p))
            tps.append(TopicPartition(topic, p, high))
        self._consumer.assign(tps)
        self._futures: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[RunOutcome]]] = {}
        self._started: set[str] = set()
        self._acks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[RunOutcome]]] = {}
        self._lock = threading.Lock()
        self._stopped: str | None = None
        self._stopped_by: type[OrchestratorError] = OrchestratorError  # KafkaAccessError for a denial
        self._skipped: dict[str, Unreadable] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="orchestrator-outcomes")
        self._thread.start()

    def expect(
        self, run_id: str, loop: asyncio.AbstractEventLoop, *, starting: bool = False
    ) -> asyncio.Future[RunOutcome]:
        with self._lock:
            entry = self._futures.get(run_id)
            if entry is None:
                entry = (loop, self._future(loop))
                self._futures[run_id] = entry
            if starting:
                self._started.add(run_id)
            return entry[1]

    def expect_ack(self, run_id: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[RunOutcome]:
        """The admission stage's answer to an idempotent start (accepted, or duplicate of another run)."""
        with self._lock:
            fut = self._future(loop)
            self._acks[run_id] = (loop, fut)
            return fut

    def _future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[RunOutcome]:
        """A future for an outcome; already failed once the watcher has stopped (none would come)."""
        fut: asyncio.Future[RunOutcome] = loop.create_future()
        if self._stopped is not None:
            fut.set_exception(self._stopped_by(self._stopped))
        return fut

    def started_here(self, run_id: str) -> bool:
        """True when this watcher was tailing before the run was started through this client."""
        return run_id in self._started

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._futures.pop(run_id, None)
            self._started.discard(run_id)
            self._skipped.pop(run_id, None)

    def skipped(self, run_id: str) -> Unreadable | None:
        """The first unreadable record met under awaited ``run_id``, if any (for a timeout to name)."""
        with self._lock:
            return self._skipped.get(run_id)

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                first = self._consumer.poll(0.1)  # wake on the first record, then take what is fetched
                if first is None:
                    continue
                for msg in [first, *self._consumer.consume(1000, timeout=0)]:
                    self._take(msg)
        except KafkaAccessError as exc:  # denied by the ACLs: every waiting client hears which (ADR 0021)
            self._fail_all(str(exc), KafkaAccessError)
        except Exception as exc:  # waiting clients must hear why, not hang until their timeouts
            log.exception("outcome watcher stopped")
            self._fail_all(f"the client's outcome watcher stopped: {exc!r}")
        finally:
            self._consumer.close()

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            doing = f"reading {self._topic} as an assign-only reader, group id {self._group}"
            refused = access.denied(self._settings, KafkaException(err), "client", doing)
            if refused is not None:
                raise refused
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("outcome watcher: %s", err)
            return
        key = msg.key()
        if key is None:
            return
        run_id = key.decode(errors="replace")
        with self._lock:
            entry = self._futures.get(run_id)
            ack = self._acks.get(run_id)
        if entry is None and ack is None:
            return
        try:
            outcome = decode_outcome(msg.value())
        except Exception as exc:  # noqa: BLE001 - any way a record fails to decode is reported, not fatal
            bad = unreadable(msg, wire.RUN_OUTCOME, exc)
            if entry is not None:
                with self._lock:
                    self._skipped.setdefault(run_id, bad)
            self._report(bad)
            return
        if outcome.status in ("accepted", "duplicate"):
            if ack is not None:
                with self._lock:
                    self._acks.pop(run_id, None)
                ack[0].call_soon_threadsafe(_settle, ack[1], outcome)
            return
        if entry is None:
            return
        loop, fut = entry
        loop.call_soon_threadsafe(_settle, fut, outcome)

    def _report(self, bad: Unreadable) -> None:
        try:
            self._on_unreadable(bad)
        except Exception:  # a failing callback must not stop results for everyone else
            log.exception("on_unreadable raised for %s", bad)

    def _fail_all(self, why: str, kind: type[OrchestratorError] = OrchestratorError) -> None:
        with self._lock:
            self._stopped, self._stopped_by = why, kind
            waiting = [*self._futures.values(), *self._acks.values()]
        for loop, fut in waiting:
            try:
                loop.call_soon_threadsafe(_fail, fut, kind(why))
            except RuntimeError:  # that loop is closed: nobody waits there any more
                continue

    def close(self) -> None:
        self._closed.set()
        self._thread.join(10)


def _timed_out(
    run_id: str, timeout: float | None, state: Unreadable | None, outcome: Unreadable | None
) -> str:
    """What a result() timeout says, naming the unreadable records that may be why it saw no outcome."""
    why = []
    if state is not None:
        why.append(f"its committed state is unreadable, so whether it had ended is unknown: {state}")
    if outcome is not None:
        why.append(f"a record on the outcomes topic under its id is unreadable (its outcome?): {outcome}")
    about = f" ({'; '.join(why)})" if why else ""
    return f"run {run_id!r} did not end within {timeout}s{about}"


def _settle(fut: asyncio.Future[RunOutcome], outcome: RunOutcome) -> None:
    if not fut.done():
        fut.set_result(outcome)


def _fail(fut: asyncio.Future[RunOutcome], error: OrchestratorError) -> None:
    if not fut.done():
        fut.set_exception(error)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
