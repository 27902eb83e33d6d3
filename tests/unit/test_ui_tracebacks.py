"""A run's page shows each failed attempt's traceback from the run's history, escaped; the JSON API carries
it per attempt. Kafka is a fake here; tests/integration/test_ui_browser.py shows it in Chromium."""

from __future__ import annotations

from typing import Any, cast

import httpx

from orchestrator import App
from orchestrator._core.state import AttemptRecord, RunState, RunStatus, StepRecord, StepStatus
from orchestrator._engine.events import Event, RunStarted, StepFailed, StepScheduled
from orchestrator.ui import UISettings, create_app
from orchestrator.ui.operations import Operations
from tests.unit.test_ui_web import FakeOps, FakeRuns

TB1 = 'Traceback (most recent call last):\n  File "app.py", line 9, in charge\n    raise E("<script>x")\n'
TB2 = 'Traceback (most recent call last):\n  File "app.py", line 12, in charge\n    second_try()\n'


def _state() -> RunState:
    attempts = [
        AttemptRecord(1, 1_100, 1_200, "ConnectionError", "first", "w-1"),
        AttemptRecord(2, 1_500, 1_600, "TerminalError", "second", "w-1"),
    ]
    step = StepRecord(0, "charge", "default", StepStatus.FAILED, 2, b"[1]", 1_000, attempts=attempts)
    step.error_type, step.error_message = "TerminalError", "second"
    return RunState("r-1", "wf", RunStatus.FAILED, b"{}", 1_000, 2_000, steps=[step])


def _history() -> list[Event]:
    return [
        Event("e0", "r-1", "wf", 1_000, RunStarted(b"{}"), 0),
        Event("e1", "r-1", "wf", 1_000, StepScheduled(0, "charge", "default", 1, b"[1]", "r-1/0/charge"), 1),
        Event(
            "e2",
            "r-1",
            "wf",
            1_200,
            StepFailed(0, 1, "ConnectionError", "first", True, 1_100, 1_200, "w-1", TB1),
            2,
        ),
        Event(
            "e3",
            "r-1",
            "wf",
            1_600,
            StepFailed(0, 2, "TerminalError", "second", False, 1_500, 1_600, "w-1", TB2),
            3,
        ),
    ]


class _Ops(FakeOps):
    def state(self, run_id: str, skipped: list[object]) -> RunState | None:
        return _state()

    def history(self, run_id: str, skipped: list[object]) -> list[Event]:
        return _history()


async def _get(path: str) -> httpx.Response:
    web = create_app(App("webtest"), FakeRuns(), UISettings(), ops=cast(Operations, _Ops()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1"
    ) as client:
        return await client.get(path)


def _escaped(tb: str) -> str:
    return tb.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")


async def test_each_failed_attempt_shows_its_own_traceback_escaped() -> None:
    page = await _get("/runs/r-1")
    assert page.status_code == 200, page.text
    html = page.text
    assert "<script>x" not in html
    steps = html.split('id="steps"')[1].split("</table>")[0]
    attempts = steps.split("<summary>attempts</summary>")[1].split("</ol>")[0].split("<li>")[1:]
    assert len(attempts) == 2
    assert _escaped(TB1) in attempts[0] and _escaped(TB2) not in attempts[0]
    assert _escaped(TB2) in attempts[1] and _escaped(TB1) not in attempts[1]
    # The steps table's error column: the traceback behind the error it shows, the last attempt's.
    error_cell = steps.split('class="step-error"')[1].split("</td>")[0]
    assert _escaped(TB2) in error_cell and _escaped(TB1) not in error_cell
    # The history rows show it folded away, not as a 160-character field.
    history = html.split('id="history"')[1]
    assert history.count('<details class="traceback">') == 2
    assert "<b>traceback</b>=" not in history


async def test_the_api_gives_each_attempt_its_traceback() -> None:
    body = (await _get("/api/runs/r-1")).json()
    got = [a["traceback"] for a in body["run"]["steps"][0]["attempts"]]
    assert got == [TB1, TB2]
    assert [e["body"].get("traceback") for e in body["history"]][2:] == [TB1, TB2]


async def test_an_attempt_without_a_traceback_shows_none() -> None:
    class Old(_Ops):  # a history written before event-v6: every traceback is ""
        def history(self, run_id: str, skipped: list[object]) -> list[Event]:
            return [
                Event(e.event_id, e.run_id, e.workflow, e.timestamp_ms, _no_tb(e.body), e.seq)
                for e in _history()
            ]

    web = create_app(App("webtest"), FakeRuns(), UISettings(), ops=cast(Operations, Old()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1"
    ) as client:
        page = await client.get("/runs/r-1")
    assert page.status_code == 200 and 'class="traceback"' not in page.text
    assert "TerminalError: second" in page.text


def _no_tb(body: Any) -> Any:
    from dataclasses import replace

    return replace(body, traceback="") if isinstance(body, StepFailed) else body
