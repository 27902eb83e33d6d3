"""Running workflow code deterministically, outside the process's own event loop.

Each workflow instance gets a private asyncio loop with no I/O and no clock: the engine resolves futures
(step results) in recorded order and runs ready callbacks until every task is blocked again. So
``asyncio.gather`` and ordinary ``await`` work inside workflows, and re-executing the same code against
the same history makes the same decisions. The idea follows Temporal's Python SDK (a custom event loop
driven step by step); the code is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator._core.tags import tags_error
from orchestrator.app import App, WorkflowDefinition
from orchestrator.context import ReceivedEvent, WorkflowContext
from orchestrator.durations import Duration, to_millis
from orchestrator.errors import StepFailedError
from orchestrator.retry import RetryPolicy


class _NoIO:
    """Selector stand-in: a workflow loop never waits for file descriptors."""

    def select(self, timeout: float | None = None) -> list[Any]:
        return []


class DeterministicLoop(asyncio.BaseEventLoop):
    """An event loop that only runs what is ready, when the engine says so."""

    def __init__(self) -> None:
        super().__init__()
        self._selector = _NoIO()  # type: ignore[assignment]

    def _process_events(self, event_list: list[Any]) -> None:
        return None

    def _write_to_self(self) -> None:
        return None

    def run_until_blocked(self) -> None:
        previous = asyncio._get_running_loop()
        asyncio._set_running_loop(self)
        try:
            while self._ready:  # type: ignore[attr-defined]
                self._run_once()  # type: ignore[attr-defined]
        finally:
            asyncio._set_running_loop(previous)

    def has_timers(self) -> bool:
        return bool(self._scheduled)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class IssuedStep:
    """A command the workflow issued (a step, a timer, a wait), at its position in the command sequence.

    ``step`` is the step name, ``"sleep"`` for a timer, or the event name for a wait.
    """

    position: int
    step: str
    args: bytes
    queue: str
    timeout_ms: int
    retry: str  # JSON of a per-call RetryPolicy, or ""
    kind: str = "step"
    due_ms: int = 0  # timer due time / wait deadline (0: none)
    key: str = ""  # wait correlation key
    lookback_ms: int = 0
    schedule_to_start_ms: int = 0
    type_hint: Any = None
    compensate: str = ""
    detach: bool = False


class WorkflowInstance:
    """One execution of a workflow function, advanced by resolving the futures of its steps."""

    def __init__(
        self,
        app: App,
        definition: WorkflowDefinition,
        run_id: str,
        input_data: bytes,
        start_ms: int,
        recorded: list[tuple[str, str]] | None = None,
    ):
        self.app = app
        self.definition = definition
        self.run_id = run_id
        self.now_ms = start_ms
        # Decode first: a bad input must fail before anything needs closing.
        takes_input = not (definition.input_hint is None and _arity(definition.fn) == 1)
        value = app.data.decode(input_data, definition.input_hint) if takes_input else None
        self.loop = DeterministicLoop()
        self.issued: list[IssuedStep] = []
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self.applied = 0  # resolutions applied so far
        self.recorded = recorded or []  # (kind, name) per position in the history being re-executed
        self.uses_asyncio_timers = False
        self.tags: dict[str, str] = {}  # every ctx.set_tags so far, merged: decide records what is new
        self.tags_error = ""  # why a ctx.set_tags was refused: decide parks the run with it
        self._rng: random.Random | None = None  # seeded on first use: seeding costs ~10 us per instance
        self.ctx = _Context(self)
        coro = definition.fn(self.ctx, value) if takes_input else definition.fn(self.ctx)
        self.task: asyncio.Task[Any] = self.loop.create_task(coro)
        self._drain()

    @property
    def rng(self) -> random.Random:
        """The run's deterministic randomness: the same sequence on every re-execution of the run."""
        if self._rng is None:
            self._rng = random.Random(f"orchestrator:{self.run_id}")
        return self._rng

    # -- driving ------------------------------------------------------------------------------------------
    def _drain(self) -> None:
        self.loop.run_until_blocked()
        if not self.task.done() and self.loop.has_timers():
            self.uses_asyncio_timers = True

    def resolve(
        self, position: int, timestamp_ms: int, result: bytes | None, failure: StepFailedError | None
    ) -> None:
        """Deliver one step's outcome and run the workflow until it blocks again."""
        self.now_ms = timestamp_ms
        self.applied += 1
        fut = self.futures.pop(position, None)
        if fut is None or fut.done():
            return
        issued = self.issued[position]
        if failure is not None:
            fut.set_exception(failure)
        elif issued.kind == "timer":
            fut.set_result(None)
        elif issued.kind == "child" and issued.detach:
            fut.set_result(issued.key)
        else:
            try:
                if issued.kind == "wait":
                    fut.set_result(self._received(issued, result))
                elif issued.kind == "child":
                    fut.set_result(self.app.data.decode(result or b"null", issued.type_hint))
                else:
                    step_def = self.app.steps.get(issued.step)
                    hint = step_def.return_hint if step_def else None
                    fut.set_result(self.app.data.decode(result or b"null", hint))
            except Exception as exc:  # noqa: BLE001 - a bad payload is the workflow's failure, not ours
                fut.set_exception(exc)
        self._drain()

    def _received(self, issued: IssuedStep, payload: bytes | None) -> ReceivedEvent:
        if payload is None:
            return ReceivedEvent(issued.step, issued.key, timed_out=True)
        return ReceivedEvent(issued.step, issued.key, self.app.data.decode(payload, issued.type_hint))

    @property
    def done(self) -> bool:
        return self.task.done()

    def outcome(self) -> tuple[Any, BaseException | None]:
        """(result, None) or (None, exception) of a finished workflow."""
        if self.task.cancelled():
            return None, asyncio.CancelledError("workflow task was cancelled")
        exc = self.task.exception()
        return (None, exc) if exc is not None else (self.task.result(), None)

    def close(self) -> None:
        """Stop the coroutine (its ``finally`` blocks run, what it issues is ignored) and free the loop."""
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):  # nothing useful to do with a dying workflow
                self.loop.run_until_blocked()
        elif not self.task.cancelled():
            self.task.exception()  # mark a failure as seen: it is recorded in the run, not lost
        for fut in self.futures.values():
            fut.cancel()
        if not self.task.done():
            self.task._log_destroy_pending = False  # type: ignore[attr-defined]
        self.loop.close()

    # -- called from the context ---------------------------------------------------------------------------
    def issue_step(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        retry: RetryPolicy | None,
        queue: str | None,
        timeout: Duration | None,
        compensate: Callable[..., Any] | None = None,
    ) -> asyncio.Future[Any]:
        name = self.app.step_name(fn)
        undo = self.app.step_name(compensate) if compensate is not None else ""
        definition = self.app.steps[name]
        position = len(self.issued)
        payload = self.app.data.encode(list(args), what=f"arguments of step {name!r}")
        self.issued.append(
            IssuedStep(
                position=position,
                step=name,
                args=payload,
                queue=queue or definition.queue,
                timeout_ms=_millis(timeout) if timeout is not None else definition.timeout_ms,
                retry=_retry_json(retry) if retry is not None else "",
                schedule_to_start_ms=definition.schedule_to_start_ms,
                compensate=undo,
            )
        )
        return self._future(position)

    def _future(self, position: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.futures[position] = fut
        return fut

    def issue_child(
        self, workflow: Callable[..., Any] | str, value: Any, run_id: str | None, detach: bool
    ) -> asyncio.Future[Any]:
        name = workflow if isinstance(workflow, str) else self.app.workflow_name(workflow)
        position = len(self.issued)
        child_id = run_id or f"{self.run_id}/{position}"
        payload = self.app.data.encode(value, what=f"input of child workflow {name!r}")
        definition = self.app.workflows.get(name)
        hint = definition.return_hint if definition is not None else None
        self.issued.append(
            IssuedStep(
                position, name, payload, "", 0, "", kind="child", key=child_id, type_hint=hint, detach=detach
            )
        )
        return self._future(position)

    def patched(self, name: str) -> bool:
        """True for runs that reach this point with the new code; False while replaying an older history."""
        position = len(self.issued)
        if position < len(self.recorded) and self.recorded[position] != ("marker", name):
            return False  # this run took the old path here before the change was deployed
        self.issued.append(IssuedStep(position, name, b"", "", 0, "", kind="marker"))
        return True

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Merge ``tags`` into the run's tags, or remember why they are refused (the first refusal wins)."""
        if self.tags_error:
            return
        error = tags_error(self.tags, tags)
        if error:
            self.tags_error = error
        else:
            self.tags.update(tags)

    def issue_timer(self, due_ms: int) -> asyncio.Future[Any]:
        position = len(self.issued)
        self.issued.append(IssuedStep(position, "sleep", b"", "", 0, "", kind="timer", due_ms=due_ms))
        return self._future(position)

    def issue_wait(
        self, name: str, key: str, timeout: Duration | None, lookback: Duration | None, type_hint: Any
    ) -> asyncio.Future[Any]:
        position = len(self.issued)
        deadline = self.now_ms + _millis(timeout) if timeout is not None else 0
        self.issued.append(
            IssuedStep(
                position,
                name,
                b"",
                "",
                0,
                "",
                kind="wait",
                due_ms=deadline,
                key=key,
                lookback_ms=_millis(lookback) if lookback is not None else 0,
                type_hint=type_hint,
            )
        )
        return self._future(position)


_text_millis = functools.lru_cache(maxsize=1024)(to_millis)


def _millis(value: Duration) -> int:
    """``to_millis``, with durations written as text parsed once per process, not once per command.

    A workflow that sleeps in a loop issues the same ``"1s"`` at every iteration, and re-executing it
    parses it again for every recorded timer: the parse was the largest single cost of a re-execution.
    """
    return _text_millis(value) if isinstance(value, str) else to_millis(value)


def _retry_json(policy: RetryPolicy) -> str:
    """A per-call policy as JSON, with durations in milliseconds so that it reads back exactly."""
    fields = asdict(policy)
    fields["initial_interval"] = to_millis(policy.initial_interval) / 1000
    fields["max_interval"] = to_millis(policy.max_interval) / 1000
    return json.dumps(fields)


def _arity(fn: Callable[..., Any]) -> int:
    import inspect

    return len(inspect.signature(fn).parameters)


class _Context(WorkflowContext):
    def __init__(self, instance: WorkflowInstance) -> None:
        self._instance = instance

    @property
    def run_id(self) -> str:
        return self._instance.run_id

    @property
    def workflow(self) -> str:
        return self._instance.definition.name

    def step(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        timeout: Duration | None = None,
        compensate: Callable[..., Any] | None = None,
    ) -> Awaitable[Any]:
        return self._instance.issue_step(fn, args, retry, queue, timeout, compensate)

    def child(
        self,
        workflow: Callable[..., Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        detach: bool = False,
    ) -> Awaitable[Any]:
        return self._instance.issue_child(workflow, input, run_id, detach)

    def patched(self, change_id: str) -> bool:
        return self._instance.patched(change_id)

    def set_tags(self, **tags: str) -> None:
        self._instance.set_tags(tags)

    def sleep(self, duration: Duration) -> Awaitable[None]:
        return self._instance.issue_timer(self._instance.now_ms + _millis(duration))

    def sleep_until(self, when: datetime) -> Awaitable[None]:
        if when.tzinfo is None:
            raise ValueError("sleep_until needs a timezone-aware datetime (e.g. datetime.now(UTC))")
        return self._instance.issue_timer(max(int(when.timestamp() * 1000), self._instance.now_ms))

    def wait_for_event(
        self,
        name: str,
        *,
        key: str = "",
        timeout: Duration | None = None,
        lookback: Duration | None = None,
        type_hint: Any = None,
    ) -> Awaitable[ReceivedEvent]:
        return self._instance.issue_wait(name, key, timeout, lookback, type_hint)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._instance.now_ms / 1000, tz=UTC)

    def random(self) -> random.Random:
        return self._instance.rng

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._instance.rng.getrandbits(128), version=4)
