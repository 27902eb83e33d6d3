"""`App`: the registry of a user's workflows and steps, shared by client, processor and worker.

The same module (``MODULE:app``) is imported by every process, so all of them agree on names, retry
policies and task queues without any registry service.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Never, ParamSpec, Protocol, TypeVar, get_type_hints, overload

from orchestrator.converter import DataConverter, PayloadCodec, PayloadConverter
from orchestrator.durations import Duration, to_millis
from orchestrator.errors import UnknownStepError, UnknownWorkflowError
from orchestrator.flow import Admission
from orchestrator.retry import DEFAULT_RETRY, RetryPolicy
from orchestrator.settings import Settings
from orchestrator.triggers import EventSource, KeyExpr, Schedule, Trigger, ValueFormat

if TYPE_CHECKING:
    from orchestrator.client import Client

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")
CoroutineT = TypeVar("CoroutineT", bound=Coroutine[object, Never, object])
"""What a workflow function returns: bound, so that a plain ``def`` is refused as at run time, and passed
through whole, so that the decorated function's type is exactly the function's (writing
``Coroutine[Any, Any, R]`` instead would put explicit ``Any`` in every workflow's type, which makes mypy give
up (``Any``) on overloaded calls such as ``ctx.child``). The bound has no ``Any`` either (``object`` and
``Never`` by variance), so that code checked with ``disallow_any_expr`` may write a bare ``@app.workflow``."""


class StepDecorator(Protocol):
    """What ``@app.step(...)`` returns: a decorator that hands back the function with its signature intact.

    A protocol with a generic ``__call__`` (rather than ``Callable[[Callable[P, R]], Callable[P, R]]``) so
    that each decorated function binds its own ``P`` and ``R``.
    """

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


class WorkflowDecorator(Protocol):
    """What ``@app.workflow(...)`` returns; only ``async def`` functions are accepted, as at run time."""

    def __call__(self, fn: Callable[P, CoroutineT], /) -> Callable[P, CoroutineT]: ...


DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class StepDefinition:
    name: str
    fn: Callable[..., Any]
    retry: RetryPolicy
    queue: str
    timeout_ms: int
    is_async: bool
    return_hint: Any
    param_hints: tuple[Any, ...]
    schedule_to_start_ms: int = 0
    admission: Admission | None = None
    local: bool = False


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    fn: Callable[..., Any]
    version: str
    input_hint: Any
    return_hint: Any
    timeout_ms: int = 0
    admission: Admission | None = None
    idempotency_window_ms: int = 86_400_000


def _hints(fn: Callable[..., Any]) -> tuple[tuple[Any, ...], Any]:
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolved forward refs: fall back to plain JSON values
        hints = {}
    params = [p.name for p in inspect.signature(fn).parameters.values()]
    return tuple(hints.get(p) for p in params), hints.get("return")


class App:
    """A named application: its workflows, steps and the settings of the Kafka cluster it runs on."""

    def __init__(
        self,
        name: str,
        *,
        settings: Settings | None = None,
        converter: PayloadConverter | None = None,
        codec: PayloadCodec | None = None,
    ) -> None:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"app name {name!r}: use letters, digits, '-' and '_' (it prefixes topic names)")
        self.name = name
        self.settings = settings or Settings()
        self.data = DataConverter(converter, codec, self.settings.max_payload_bytes)
        self.workflows: dict[str, WorkflowDefinition] = {}
        self.steps: dict[str, StepDefinition] = {}
        self.triggers: dict[str, list[Trigger]] = {}  # workflow name -> triggers
        self.event_sources: dict[str, EventSource] = {}
        self.schedules: dict[str, Schedule] = {}

    # -- registration -------------------------------------------------------------------------------------
    @overload
    def step(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout: Duration | None = None,
        schedule_to_start_timeout: Duration | None = None,
        admission: Admission | None = None,
        local: bool = False,
    ) -> Callable[P, R]: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout: Duration | None = None,
        schedule_to_start_timeout: Duration | None = None,
        admission: Admission | None = None,
        local: bool = False,
    ) -> StepDecorator: ...

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout: Duration | None = None,
        schedule_to_start_timeout: Duration | None = None,
        admission: Admission | None = None,
        local: bool = False,
    ) -> Any:
        """Register a step (async or plain function). Usable as ``@app.step`` or ``@app.step(...)``.

        The function itself is returned, so it stays callable as before (handy in unit tests) and type
        checkers keep its signature: ``ctx.step(fn, *args)`` is checked against it and typed by its result.

        ``timeout`` limits one attempt from its start to its result (start-to-close); an attempt over it
        is failed and retried by the policy, also when its worker died and the command is never redelivered.
        ``schedule_to_start_timeout`` limits how long an attempt may wait for a worker to pick it up.
        ``admission`` limits the step's executions across all runs (concurrency, rate, priority), keyed by
        a field of its first argument; attempts wait in the keyed stage until admitted.

        ``local=True`` runs the step inside the processor, in the transaction that scheduled it, instead of
        sending it to a worker (Temporal's local activities): no Kafka round trip per step, so a chain of
        local steps costs about one hop. Its result is recorded like any other, but only when that
        transaction commits: a processor crash before then runs the attempt again, and the processor waits
        for it, so keep local steps short and idempotent (validation, pure computation, a fast lookup).
        Retries, timeouts, compensation and replay work as for worker steps; ``queue`` is not used.
        """

        def register(func: F) -> F:
            step_name = name or func.__name__
            if step_name in self.steps and self.steps[step_name].fn is not func:
                raise ValueError(f"step {step_name!r} is registered twice")
            if local and admission is not None:
                raise ValueError(
                    f"step {step_name!r}: a local step cannot have an admission limit (it runs at once, "
                    "inside the processor, and cannot wait for a slot); drop local=True or the admission"
                )
            params, ret = _hints(func)
            self.steps[step_name] = StepDefinition(
                name=step_name,
                fn=func,
                retry=retry or DEFAULT_RETRY,
                queue=queue,
                timeout_ms=to_millis(timeout) if timeout is not None else 0,
                is_async=inspect.iscoroutinefunction(func),
                return_hint=ret,
                param_hints=params,
                schedule_to_start_ms=(
                    to_millis(schedule_to_start_timeout) if schedule_to_start_timeout is not None else 0
                ),
                admission=admission,
                local=local,
            )
            func.__orchestrator_step__ = step_name  # type: ignore[attr-defined]
            return func

        return register(fn) if fn is not None else register

    @overload
    def workflow(
        self,
        fn: Callable[P, CoroutineT],
        *,
        name: str | None = None,
        version: str = "",
        timeout: Duration | None = None,
        trigger: Trigger | list[Trigger] | None = None,
        schedule: str | None = None,
        timezone: str = "UTC",
        missed: str = "skip",
        admission: Admission | None = None,
        idempotency_window: Duration = "1d",
    ) -> Callable[P, CoroutineT]: ...

    @overload
    def workflow(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        version: str = "",
        timeout: Duration | None = None,
        trigger: Trigger | list[Trigger] | None = None,
        schedule: str | None = None,
        timezone: str = "UTC",
        missed: str = "skip",
        admission: Admission | None = None,
        idempotency_window: Duration = "1d",
    ) -> WorkflowDecorator: ...

    def workflow(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        version: str = "",
        timeout: Duration | None = None,
        trigger: Trigger | list[Trigger] | None = None,
        schedule: str | None = None,
        timezone: str = "UTC",
        missed: str = "skip",
        admission: Admission | None = None,
        idempotency_window: Duration = "1d",
    ) -> Any:
        """Register a workflow: ``async def wf(ctx: WorkflowContext, input: T) -> R``.

        The function itself is returned with its signature, which is how ``client.start(wf, input)`` and
        ``ctx.child(wf, input)`` check ``input`` against ``T`` and type the result as ``R``.

        ``timeout`` bounds the whole run: when it passes, the run fails with ``RunTimeout`` and its pending
        steps, timers and waits are cancelled. ``trigger`` starts runs from records of your own topics;
        ``schedule`` (cron, in ``timezone``) starts one run per tick, ``missed`` saying what to do with ticks
        that passed while nothing ran (``skip``, ``run_once``, ``run_all``). ``admission`` declares flow
        control (concurrency, rate, debounce, priority); ``idempotency_window`` is how long a start's
        idempotency key is remembered.
        """

        def register(func: F) -> F:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"workflow {func.__qualname__} must be an async function")
            wf_name = name or func.__name__
            if wf_name in self.workflows and self.workflows[wf_name].fn is not func:
                raise ValueError(f"workflow {wf_name!r} is registered twice")
            params, ret = _hints(func)
            if len(params) not in (1, 2):
                raise TypeError(f"workflow {wf_name!r} must take (ctx) or (ctx, input)")
            self.workflows[wf_name] = WorkflowDefinition(
                name=wf_name,
                fn=func,
                version=version,
                input_hint=params[1] if len(params) == 2 else None,
                return_hint=ret,
                timeout_ms=to_millis(timeout) if timeout is not None else 0,
                admission=admission,
                idempotency_window_ms=to_millis(idempotency_window),
            )
            if trigger is not None:
                self.triggers[wf_name] = list(trigger) if isinstance(trigger, list) else [trigger]
            if schedule is not None:
                self.schedules[wf_name] = Schedule(wf_name, schedule, timezone, missed)
            func.__orchestrator_workflow__ = wf_name  # type: ignore[attr-defined]
            return func

        return register(fn) if fn is not None else register

    def event_source(
        self,
        name: str,
        *,
        topic: str,
        key: KeyExpr,
        filter: Callable[[Any], bool] | None = None,
        retention: Duration = "1d",
        value_format: ValueFormat | None = None,
    ) -> EventSource:
        """Declare that records of ``topic`` are events ``name`` keyed by ``key``, for ``wait_for_event``."""
        if name in self.event_sources:
            raise ValueError(f"event source {name!r} is declared twice")
        source = EventSource(name, topic, key, filter, retention, value_format or ValueFormat())
        self.event_sources[name] = source
        return source

    @property
    def source_topics(self) -> set[str]:
        """The user topics processors consume (triggers and event sources)."""
        topics = {t.topic for ts in self.triggers.values() for t in ts}
        return topics | {s.topic for s in self.event_sources.values()}

    # -- look-ups -----------------------------------------------------------------------------------------
    def step_name(self, fn: Callable[..., Any] | str) -> str:
        name = fn if isinstance(fn, str) else getattr(fn, "__orchestrator_step__", None) or ""
        if name not in self.steps:
            raise UnknownStepError(
                f"{getattr(fn, '__qualname__', fn)!r} is not a registered step of app {self.name!r}; "
                "decorate it with @app.step"
            )
        return name

    def workflow_name(self, fn: Callable[..., Any] | str) -> str:
        name = fn if isinstance(fn, str) else getattr(fn, "__orchestrator_workflow__", None) or ""
        if name not in self.workflows:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise UnknownWorkflowError(
                f"{getattr(fn, '__qualname__', fn)!r} is not a workflow of app {self.name!r} (known: {known})"
            )
        return name

    @property
    def queues(self) -> set[str]:
        """Task queues workers serve (local steps run in the processor and need none)."""
        return {s.queue for s in self.steps.values() if not s.local} | {DEFAULT_QUEUE}

    def client(self) -> Client:
        from orchestrator.client import Client

        return Client(self)
