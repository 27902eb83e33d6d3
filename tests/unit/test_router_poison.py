"""The keyed stage refuses records that make no sense there, without changing what it already holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import App, WorkflowContext
from orchestrator._engine import events as ev
from orchestrator._engine.events import Event
from orchestrator._engine.router import Router, schedule_states
from orchestrator._engine.store import PartitionStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    s = PartitionStore(tmp_path / "k0", 0)
    yield s
    s.close()


def _app() -> App:
    app = App("shop")

    @app.workflow(schedule="*/5 * * * *")
    async def report(ctx: WorkflowContext, when: str) -> None: ...

    return app


def _register(cron: str, timezone: str = "UTC", missed: str = "skip") -> Event:
    return Event("s", "", "report", 1_000, ev.ScheduleRegister("report", cron, timezone, missed))


@pytest.mark.parametrize(
    "body",
    [
        ev.StartRun(b"null"),
        ev.StepCompleted(0, 1, b"1", 1, 2),
        ev.CancelRun("why"),
    ],
)
def test_run_requests_on_the_keyed_topic_are_rejected(store: PartitionStore, body: object) -> None:
    fx = Router(_app()).handle(store, Event("e", "r", "report", 1, body), 5)  # type: ignore[arg-type]
    assert "does not belong on the keyed topic" in fx.dead_letter
    assert (fx.inbox, fx.keyed, fx.outcomes, store.dirty()) == ([], [], [], {})


@pytest.mark.parametrize(
    ("cron", "timezone", "missed", "reason"),
    [
        ("not a cron", "UTC", "skip", "'not a cron' is not a cron expression"),
        ("*/5 * * * *", "Mars/Base", "skip", "Mars/Base"),
        ("*/5 * * * *", "UTC", "never", "missed must be one of"),
    ],
)
def test_bad_schedule_registration_keeps_the_current_schedule(
    store: PartitionStore, cron: str, timezone: str, missed: str, reason: str
) -> None:
    router = Router(_app())
    assert router.handle(store, _register("*/5 * * * *"), 1_000).dead_letter == ""
    store.commit(None, None)
    before = dict(store.scan(b""))
    fx = router.handle(store, _register(cron, timezone, missed), 2_000)
    assert (
        "schedule of 'report' refused, the current one is kept" in fx.dead_letter and reason in fx.dead_letter
    )
    assert store.dirty() == {}  # the tick timer and the schedule are untouched
    assert dict(store.scan(b"")) == before
    assert [s["cron"] for s in schedule_states(store)] == ["*/5 * * * *"]


def test_step_attempt_for_an_unknown_task_queue_is_rejected(store: PartitionStore) -> None:
    body = ev.AdmitRequest("step:echo", "r/0/1", b"cmd", "", 0.0, "", "no such queue!")
    fx = Router(_app()).handle(store, Event("e", "r", "report", 1, body), 5)
    assert "names task queue 'no such queue!'" in fx.dead_letter and "queues: default" in fx.dead_letter
    assert (fx.commands, fx.inbox, store.dirty()) == ([], [], {})
