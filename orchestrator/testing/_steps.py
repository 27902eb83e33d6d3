"""Running step attempts in the test's process: the real step functions, or the fakes a test put in.

The decoding of arguments, the encoding and size check of results and the classification of failures
(retryable or terminal) come from ``orchestrator._engine.attempts``, which workers and local steps share,
so a step behaves in a test as it does in production. Only time differs: an attempt takes no virtual
time, so its started and finished times are the environment clock's ``now``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from orchestrator._engine import attempts
from orchestrator._engine.events import Event, StepCompleted, StepFailed, StepStarted
from orchestrator._engine.records import StepCommand
from orchestrator.app import App
from orchestrator.context import StepInfo, _current_step

WORKER = "testing"
"""Recorded as the worker of every attempt run by a test environment."""


class StepRunner:
    """Executes step commands; ``mock`` replaces a step's function for this runner only."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._mocks: dict[str, Callable[..., Any]] = {}

    def mock(self, step: Callable[..., Any] | str, fake: Callable[..., Any]) -> None:
        """Run ``fake`` (sync or async, same arguments) instead of the registered function of ``step``."""
        if not callable(fake):
            raise TypeError(f"the fake for step {step!r} must be callable, not {type(fake).__name__}")
        self._mocks[self.app.step_name(step)] = fake

    def unmock(self, step: Callable[..., Any] | str) -> None:
        self._mocks.pop(self.app.step_name(step), None)

    def started(self, cmd: StepCommand, now_ms: int) -> Event:
        """The start report a worker sends for attempts with a timeout (the decider arms the deadline)."""
        body = StepStarted(cmd.position, cmd.attempt, now_ms, WORKER)
        return Event(f"{cmd.idempotency_key}/{cmd.attempt}/started", cmd.run_id, cmd.workflow, now_ms, body)

    async def run(self, cmd: StepCommand, now_ms: int) -> Event:
        """One attempt; every outcome, an exception included, is a result event (it never raises)."""
        body: StepCompleted | StepFailed
        try:
            definition = attempts.definition_of(self.app, cmd, "this test environment")
            args = attempts.arguments(self.app, definition, cmd)
            fn = self._mocks.get(cmd.step, definition.fn)
            timeout = cmd.timeout_ms / 1000 if cmd.timeout_ms else None
            result = await self._call(fn, args, attempts.step_info(cmd), timeout)
            body = attempts.completed(self.app, cmd, result, now_ms, WORKER)
        except Exception as exc:  # noqa: BLE001 - a failing step is a StepFailed, as on a worker
            body = attempts.failed(cmd, exc, now_ms, WORKER)
        body = replace(body, started_ms=now_ms, finished_ms=now_ms)
        event = attempts.result_event(cmd, body, WORKER)
        return replace(event, timestamp_ms=now_ms)

    @staticmethod
    async def _call(
        fn: Callable[..., Any], args: tuple[Any, ...], info: StepInfo, timeout: float | None
    ) -> Any:
        """Call ``fn`` with ``step_info()`` set; a timeout is real (wall-clock) time, as on a worker."""
        token = _current_step.set(info)
        try:
            if inspect.iscoroutinefunction(fn):
                coro = fn(*args)
                return await (coro if timeout is None else asyncio.wait_for(coro, timeout))
            call = asyncio.to_thread(fn, *args)  # on a thread, like a worker's pool (context copied)
            result = await (call if timeout is None else asyncio.wait_for(call, timeout))
            if inspect.isawaitable(result):  # a plain callable (e.g. a lambda) returning a coroutine
                result = await result
            return result
        finally:
            _current_step.reset(token)
