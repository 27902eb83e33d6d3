"""One step attempt from its command to its result: what workers and local steps have in common.

Where an attempt runs (a worker's event loop or thread pool, or inside the processor for a local step)
differs; how its arguments are decoded, how its result is encoded and size-checked, and how an exception
becomes a retryable or terminal failure must not, or the same step would behave differently depending on
where it ran.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator._core import formats
from orchestrator._engine import tracebacks
from orchestrator._engine.events import Event, StepCompleted, StepFailed
from orchestrator._engine.records import StepCommand
from orchestrator.app import App, StepDefinition
from orchestrator.context import StepInfo
from orchestrator.errors import PayloadTooLargeError, TerminalError, UnknownStepError

log = logging.getLogger("orchestrator.attempts")


class StepCancelledError(Exception):
    """Reported for an attempt stopped because its run was cancelled or its attempt timed out."""


def definition_of(app: App, cmd: StepCommand, where: str) -> StepDefinition:
    """The step's definition; UnknownStepError naming ``where`` it was looked for when missing."""
    definition = app.steps.get(cmd.step)
    if definition is None:
        raise UnknownStepError(f"{where} has no step {cmd.step!r}; deploy the code that registers it")
    return definition


def arguments(app: App, definition: StepDefinition, cmd: StepCommand) -> tuple[Any, ...]:
    """The command's arguments, decoded to the step's parameter annotations."""
    return tuple(app.data.decode(cmd.args, _args_type(definition, cmd.args, app)))


def step_info(cmd: StepCommand) -> StepInfo:
    return StepInfo(cmd.run_id, cmd.workflow, cmd.step, cmd.position, cmd.attempt, cmd.idempotency_key)


def completed(app: App, cmd: StepCommand, result: Any, started_ms: int, worker: str) -> StepCompleted:
    """The success report; raises PayloadTooLargeError (a terminal failure) for an oversize result."""
    data = app.data.encode(result, what=f"result of step {cmd.step!r}")
    return StepCompleted(cmd.position, cmd.attempt, data, started_ms, now_ms(), worker)


def failed(cmd: StepCommand, exc: BaseException, started_ms: int, worker: str) -> StepFailed:
    """The failure report: terminal for TerminalError, oversize payloads and cancellation, else retryable.

    Either way it carries the exception's traceback (bounded, `tracebacks.format_bounded`) for the history.
    """
    retryable = not isinstance(exc, TerminalError | PayloadTooLargeError | StepCancelledError)
    error_type = getattr(exc, "error_type", None) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        error_type = "StepTimeout"
    message = str(exc) or repr(exc)
    log.info(
        "step %s of %s attempt %d failed: %s: %s",
        cmd.step,
        cmd.run_id,
        cmd.attempt,
        error_type,
        message,
        extra={"run_id": cmd.run_id, "step": cmd.step, "position": cmd.position, "attempt": cmd.attempt},
    )
    return StepFailed(
        cmd.position,
        cmd.attempt,
        error_type,
        message[:4000],
        retryable,
        started_ms,
        now_ms(),
        worker,
        tracebacks.format_bounded(exc),
    )


def result_event(cmd: StepCommand, body: StepCompleted | StepFailed, suffix: str) -> Event:
    """The inbox event carrying ``body``; ``suffix`` makes its id unique per report."""
    return Event(
        event_id=formats.attempt_report_id(cmd.idempotency_key, cmd.attempt, suffix),
        run_id=cmd.run_id,
        workflow=cmd.workflow,
        timestamp_ms=now_ms(),
        body=body,
    )


def _args_type(definition: StepDefinition, raw: bytes, app: App) -> Any:
    """``tuple[A, B, ...]`` of the step's parameter annotations, for as many arguments as were sent."""
    count = len(app.data.decode(raw)) if raw else 0
    hints = list(definition.param_hints[:count])
    hints += [Any] * (count - len(hints))
    return tuple.__class_getitem__(tuple(h if h is not None else Any for h in hints))


def now_ms() -> int:
    return int(time.time() * 1000)
