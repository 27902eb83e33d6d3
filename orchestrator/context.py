"""What workflow code sees: the `WorkflowContext` interface, and `StepInfo` for step code.

The interface lives here; the engine implements it (``orchestrator/_core/runtime.py``). Workflow code must
take everything it observes from the context (results, time, randomness, ids), because it is re-executed
against its recorded history after eviction or a restart and must decide the same way each time.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar, TypeVarTuple, overload

from orchestrator.durations import Duration
from orchestrator.retry import RetryPolicy

T = TypeVar("T")
R = TypeVar("R")
InputT = TypeVar("InputT")
Ts = TypeVarTuple("Ts")
"""The positional arguments of a step. A tuple of types, not a ParamSpec: step arguments travel as a list
and are applied positionally, and ``ctx.step``'s own keyword options (``retry``, ``compensate``, ...) may not
follow ``*args: P.args`` (PEP 612), while they may follow ``*args: *Ts``."""


class WorkflowContext(ABC):
    """The workflow's only window on the world."""

    @property
    @abstractmethod
    def run_id(self) -> str: ...

    @property
    @abstractmethod
    def workflow(self) -> str: ...

    @overload
    @abstractmethod
    def step(
        self,
        fn: Callable[[*Ts], Coroutine[Any, Any, R]],
        *args: *Ts,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        timeout: Duration | None = None,
        compensate: Callable[[*Ts], object] | None = None,
    ) -> Awaitable[R]: ...

    @overload
    @abstractmethod
    def step(
        self,
        fn: Callable[[*Ts], R],
        *args: *Ts,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        timeout: Duration | None = None,
        compensate: Callable[[*Ts], object] | None = None,
    ) -> Awaitable[R]: ...

    @abstractmethod
    def step(
        self,
        fn: Callable[[*Ts], Any],
        *args: *Ts,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        timeout: Duration | None = None,
        compensate: Callable[[*Ts], object] | None = None,
    ) -> Awaitable[Any]:
        """Schedule a registered step on a worker; await it for its (recorded) result.

        Calling it issues the command at once, so several steps started before awaiting run in parallel
        (``await asyncio.gather(ctx.step(a), ctx.step(b))``). Keyword options override the step's defaults
        for this call. ``compensate`` names a registered step that undoes this one (saga): if the run later
        fails or is cancelled, the compensations of its completed steps run newest first, with the same
        arguments, each durable and retried by its own policy.

        Typing: ``args`` are checked against ``fn``'s positional parameters (and ``compensate``'s, since it
        receives the same ones), and the awaited value has ``fn``'s return type, an async step's unwrapped.
        The async variant takes ``Coroutine``, not ``Awaitable``: both variants then see the same type for
        ``fn``, so a step whose signature contains ``Any`` is not an ambiguous match (mypy would answer
        ``Any``); and only ``async def`` steps are awaited by the engine anyway.
        """

    @overload
    @abstractmethod
    def child(
        self,
        workflow: Callable[[WorkflowContext, InputT], Awaitable[R]],
        input: InputT,
        *,
        run_id: str | None = None,
        detach: Literal[False] = False,
    ) -> Awaitable[R]: ...

    @overload
    @abstractmethod
    def child(
        self,
        workflow: Callable[[WorkflowContext], Awaitable[R]],
        input: None = None,
        *,
        run_id: str | None = None,
        detach: Literal[False] = False,
    ) -> Awaitable[R]: ...

    @overload
    @abstractmethod
    def child(
        self,
        workflow: Callable[[WorkflowContext, InputT], Awaitable[object]],
        input: InputT,
        *,
        run_id: str | None = None,
        detach: Literal[True],
    ) -> Awaitable[str]: ...

    @overload
    @abstractmethod
    def child(
        self,
        workflow: Callable[[WorkflowContext], Awaitable[object]],
        input: None = None,
        *,
        run_id: str | None = None,
        detach: Literal[True],
    ) -> Awaitable[str]: ...

    @overload
    @abstractmethod
    def child(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        detach: bool = False,
    ) -> Awaitable[Any]: ...

    @abstractmethod
    def child(
        self,
        workflow: Callable[..., Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        detach: bool = False,
    ) -> Awaitable[Any]:
        """Start a child run with its own id and history, linked to this one.

        Attached (the default): await it for the child's result; a failed child raises StepFailedError here,
        and cancelling this run cancels the child. ``detach=True``: returns the child's run id at once and
        the child lives on its own. The default child run id is ``<this run id>/<position>``.

        Typing: ``input`` is checked against the child workflow's input parameter (omitted for a workflow
        that takes only ``ctx``); the awaited value is its result type, or ``str`` (the run id) when
        detached. ``detach`` must be written as ``True`` or ``False``: with a ``bool`` variable no typed
        variant applies (a variant returning ``R | str`` would also match ``detach=True``, and mypy answers
        ``Any`` when two variants match a call whose types contain ``Any``). A workflow named by a string is
        unchecked.
        """

    @abstractmethod
    def patched(self, change_id: str) -> bool:
        """Version marker for changing a workflow while runs are open.

        ``if ctx.patched("charge-before-reserve"): <new code> else: <old code>``: runs that started before
        the change keep their recorded path (False), runs that reach this point with the new code take the
        new one (True, recorded in their history). Once no open run predates the change, remove the old
        branch and keep the call.
        """

    def set_tags(self, **tags: str) -> None:
        """Tag this run with searchable ``key=value`` pairs: ``ctx.set_tags(customer="c-42", plan="pro")``.

        Recorded in the run's history (a ``TagsSet`` event) when the workflow next yields, merged into the
        tags set before (a key set again takes its new value), and found with
        ``orchestrator runs list --tag customer=c-42``. Deterministic like everything in a workflow: on
        re-execution the same calls give the same tags and nothing new is recorded. Bounded (at most 16
        keys of up to 64 characters ``[A-Za-z0-9_.:/-]``, string values of up to 256): a call outside the
        bounds parks the run with the reason instead of recording anything.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support tags")

    @abstractmethod
    def sleep(self, duration: Duration) -> Awaitable[None]:
        """A durable timer: the run is evicted from memory while it sleeps, for seconds or for months."""

    @abstractmethod
    def sleep_until(self, when: datetime) -> Awaitable[None]:
        """Sleep until ``when`` (timezone-aware); returns at once for a time already past."""

    @abstractmethod
    def wait_for_event(
        self,
        name: str,
        *,
        key: str = "",
        timeout: Duration | None = None,
        lookback: Duration | None = None,
        type_hint: Any = None,
    ) -> Awaitable[ReceivedEvent]:
        """Wait for an event named ``name`` (a signal, or a domain event from an event source).

        ``key`` is the correlation key (e.g. an order id) a domain event must carry; empty accepts any.
        With ``timeout``, the result has ``timed_out=True`` when nothing came in time. ``lookback`` accepts a
        domain event that arrived up to that long before the wait began (signals sent to the run are always
        kept until waited for).
        """

    @overload
    async def map(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        items: Iterable[T],
        *,
        max_in_flight: int = 50,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
    ) -> list[R]: ...

    @overload
    async def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        max_in_flight: int = 50,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
    ) -> list[R]: ...

    async def map(
        self,
        fn: Callable[[T], Any],
        items: Iterable[T],
        *,
        max_in_flight: int = 50,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
    ) -> list[Any]:
        """Run step ``fn`` once per item with at most ``max_in_flight`` at a time; results in input order.

        Deterministic like any other workflow code: the engine records which result came back when, so a
        re-execution issues the same steps in the same order. The first failed item raises its
        ``StepFailedError`` (items already running still finish and are recorded). Typed like ``ctx.step``:
        each item must fit ``fn``'s one parameter, and the result is a list of its return type.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        pending = list(enumerate(items))
        results: list[Any] = [None] * len(pending)
        running: dict[asyncio.Future[Any], int] = {}
        queue_iter = iter(pending)

        def launch() -> bool:
            nxt = next(queue_iter, None)
            if nxt is None:
                return False
            index, item = nxt
            running[asyncio.ensure_future(self.step(fn, item, retry=retry, queue=queue))] = index
            return True

        while len(running) < max_in_flight and launch():
            pass
        while running:
            done, _ = await asyncio.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f]):  # set order is not deterministic
                results[running.pop(fut)] = fut.result()
                launch()
        return results

    @abstractmethod
    def now(self) -> datetime:
        """The time of the event the workflow is reacting to (UTC), identical on re-execution."""

    @abstractmethod
    def random(self) -> random.Random:
        """A random generator seeded by the run id: the same sequence on every re-execution."""

    @abstractmethod
    def uuid4(self) -> uuid.UUID:
        """A random-looking UUID that is the same on every re-execution."""


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """What ``wait_for_event`` returns: the event, or the timeout marker to branch on."""

    name: str
    key: str = ""
    payload: Any = None
    timed_out: bool = False
    source: str = ""


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a running step knows about its invocation.

    ``idempotency_key`` is stable across retries and redeliveries of the same step of the same run: pass it
    to outside systems (payment APIs, mailers) so that an at-least-once re-execution is not a second charge.
    """

    run_id: str
    workflow: str
    step: str
    position: int
    attempt: int
    idempotency_key: str
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)
    """Set when the run is cancelled while this attempt runs; long plain-function steps should check it.
    (Async steps are cancelled with ``asyncio.CancelledError``.)"""


_current_step: ContextVar[StepInfo | None] = ContextVar("orchestrator_step", default=None)


def step_info() -> StepInfo:
    """The invocation of the step that is running now; RuntimeError outside a step."""
    info = _current_step.get()
    if info is None:
        raise RuntimeError("step_info() is only available while a step runs on a worker")
    return info
