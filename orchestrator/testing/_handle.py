"""The handle a test gets from ``env.start``: the same calls as the client's ``RunHandle``, no broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from orchestrator._engine.events import Event
from orchestrator.client import RunDescription

if TYPE_CHECKING:
    from orchestrator.testing._environment import WorkflowEnvironment

R = TypeVar("R")


class WorkflowHandle(Generic[R]):
    """One run in a ``WorkflowEnvironment``; ``R`` is the workflow's result type when it came from
    ``env.start(workflow, ...)`` (``Any`` for a handle made from a run id)."""

    def __init__(self, env: WorkflowEnvironment, run_id: str, workflow: str | None) -> None:
        self.env = env
        self.run_id = run_id
        self.workflow = workflow

    async def result(self, timeout: float | None = None) -> R:
        """The run's return value, skipping virtual time while the run only waits for timers.

        Raises ``RunFailedError`` when the run failed, was cancelled or parked (as the real client does),
        and ``RunTimeoutError`` when it has not ended after ``timeout`` seconds of *virtual* time, or can
        never end because it waits for something no timer will bring (a signal, an event).

        Before each skip, the test's other tasks get a few event-loop turns (so a task signalling the run
        wins against the wait's timeout); to send something at a chosen virtual time, ``env.sleep`` there
        and send it before awaiting the result.
        """
        return cast(R, await self.env.result(self.run_id, timeout))

    async def signal(self, name: str, payload: Any = None, *, key: str = "") -> None:
        await self.env.signal(self.run_id, name, payload, key=key)

    async def cancel(self, reason: str = "cancelled by request") -> None:
        await self.env.cancel(self.run_id, reason)

    async def describe(self) -> RunDescription | None:
        """Async like the client's, so code written against a ``RunHandle`` works with this one."""
        return self.env.describe(self.run_id)

    @property
    def status(self) -> str | None:
        return self.env.status(self.run_id)

    def history(self) -> list[Event]:
        return self.env.history(self.run_id)
