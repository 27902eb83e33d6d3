"""The error taxonomy users see.

One root (`OrchestratorError`). `TerminalError` is the user's way to say "do not retry"; everything else a
step raises is retried by its policy. Errors that describe engine state (a parked run, a fenced processor)
carry enough text to act on without reading the source.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error raised by this package."""


class TerminalError(OrchestratorError):
    """Raised by a step (or workflow) to fail at once, without further retries."""

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


class StepFailedError(OrchestratorError):
    """Raised inside a workflow when a step has failed for good (terminal error or retries exhausted).

    The workflow may catch it to branch or compensate; uncaught, it fails the run.
    """

    def __init__(self, step: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {error_type}: {message}")
        self.step = step
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class RunFailedError(OrchestratorError):
    """Raised by `RunHandle.result()` when the run ended in failure."""

    def __init__(self, run_id: str, status: str, error_type: str, message: str) -> None:
        super().__init__(f"run {run_id!r} {status}: {error_type}: {message}")
        self.run_id = run_id
        self.status = status
        self.error_type = error_type
        self.message = message


class NonDeterminismError(OrchestratorError):
    """Workflow code, re-executed against its history, did something the history does not show.

    The run is parked (not failed, not corrupted) so that an operator can deploy the previous code or
    resume it after a fix.
    """


class UnknownWorkflowError(OrchestratorError):
    """A name that no registered workflow has."""


class UnknownStepError(OrchestratorError):
    """A worker was asked to run a step it has no function for."""


class PayloadTooLargeError(OrchestratorError):
    """An encoded input or result exceeds the configured `max_payload_bytes`."""


class PayloadError(OrchestratorError):
    """A value could not be converted to or from its wire form."""


class ProcessorFencedError(OrchestratorError):
    """Another instance with the same transactional id took over; this one must stop."""


class SchemaError(OrchestratorError):
    """A record whose schema id is unknown or whose bytes do not match its schema."""


class RunTimeoutError(OrchestratorError, TimeoutError):
    """`RunHandle.result(timeout=...)` elapsed before the run ended."""
