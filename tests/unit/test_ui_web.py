"""The web UI's HTTP layer without Kafka: who may reach what (tokens, cookie, read-only, CSRF, JSON-only
API posts), bulk confirmation, and the request metrics' labels. Kafka reads and actions are a fake here;
tests/integration/test_ui_browser.py runs the same pages against a real broker, processor and worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from pydantic import SecretStr

from orchestrator import App
from orchestrator._engine.queries.model import RunFilter, RunPage, RunSummary
from orchestrator.ui import UISettings, create_app
from orchestrator.ui.auth import COOKIE
from orchestrator.ui.changelog_runs import page_of
from orchestrator.ui.metrics import UIMetrics
from orchestrator.ui.operations import Letters, Operations

RUNS = [RunSummary(f"run-{i}", "order", "running" if i < 3 else "failed", 1000 + i, 2000) for i in range(5)]


class FakeRuns:
    def list(self, flt: RunFilter, cursor: str | None = None, limit: int = 50) -> RunPage:
        return page_of(RUNS, flt, cursor, limit)

    def count(self, flt: RunFilter) -> int:
        return len(page_of(RUNS, flt, None, 1000).runs)


class FakeOps:
    def __init__(self) -> None:
        self.acted: list[tuple[str, str, dict[str, Any]]] = []

    async def act(self, action: str, run_id: str, **kw: Any) -> None:
        self.acted.append((action, run_id, kw))

    def dead_letters(self) -> Letters:
        return Letters()

    async def close(self) -> None:
        return None


@pytest.fixture
async def ui() -> AsyncIterator[tuple[httpx.AsyncClient, FakeOps, UIMetrics]]:
    ops, metrics = FakeOps(), UIMetrics()
    settings = UISettings(token=SecretStr("full"), read_token=SecretStr("look"))
    web = create_app(App("webtest"), FakeRuns(), settings, ops=cast(Operations, ops), metrics=metrics)
    # httpx straight on the ASGI app (Starlette's TestClient wants another httpx package).
    return (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1"),
        ops,
        metrics,
    )


def _csrf(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


async def test_without_a_token_pages_redirect_to_sign_in_and_the_api_answers_401(ui: Any) -> None:
    client, _, _ = ui
    page = await client.get("/runs?status=failed")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/runs%3Fstatus%3Dfailed"
    assert (await client.get("/api/runs")).status_code == 401
    assert (await client.get("/api/runs", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.post("/login", data={"token": "nope"})).status_code == 401


async def test_bearer_tokens_read_and_only_the_full_one_acts(ui: Any) -> None:
    client, ops, _ = ui
    read, full = {"Authorization": "Bearer look"}, {"Authorization": "Bearer full"}
    listed = (await client.get("/api/runs?status=failed", headers=read)).json()
    assert [r["run_id"] for r in listed["runs"]] == ["run-4", "run-3"]
    refused = await client.post("/api/runs/run-1/cancel", json={}, headers=read)
    assert refused.status_code == 403 and ops.acted == []
    done = await client.post(
        "/api/runs/run-1/signal", json={"name": "go", "payload": {"ok": 1}}, headers=full
    )
    assert done.status_code == 202
    assert ops.acted == [("signal", "run-1", ops.acted[0][2])] and ops.acted[0][2]["payload"] == {"ok": 1}
    form = await client.post("/api/runs/run-1/cancel", data={"reason": "x"}, headers=full)
    assert form.status_code == 415  # API posts are JSON only: a cross-site form cannot send JSON


async def test_browser_signs_in_once_and_forms_need_the_csrf_token(ui: Any) -> None:
    client, ops, _ = ui
    signed = await client.post("/login", data={"token": "full", "next": "/runs"})
    assert signed.status_code == 303 and signed.headers["location"] == "/runs"
    cookie = signed.headers["set-cookie"]
    client.cookies.update(signed.cookies)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "full" not in cookie.split(";")[0]
    runs = await client.get("/runs")
    assert runs.status_code == 200 and "run-4" in runs.text
    token = _csrf(runs.text)
    assert (await client.post("/runs/run-1/cancel", data={"reason": "r"})).status_code == 403
    assert (await client.post("/runs/run-1/cancel", data={"csrf": "forged"})).status_code == 403
    ok = await client.post("/runs/run-1/cancel", data={"csrf": token, "reason": "r"})
    assert ok.status_code == 303 and [a[:2] for a in ops.acted] == [("cancel", "run-1")]
    assert (
        await client.post(
            "/login", data={"token": "full", "next": "https://evil.example/"}, follow_redirects=False
        )
    ).headers["location"] == "/runs"


async def test_a_read_only_browser_sees_no_actions_and_cannot_post(ui: Any) -> None:
    client, ops, _ = ui
    client.cookies.update((await client.post("/login", data={"token": "look"})).cookies)
    runs = await client.get("/runs")
    assert "read-only" in runs.text and 'action="/runs/bulk"' not in runs.text
    assert (await client.post("/runs/run-1/cancel", data={"csrf": "x"})).status_code == 403
    client.cookies.set(COOKIE, "admin.forged")
    assert (await client.get("/runs")).status_code == 303
    assert ops.acted == []


async def test_bulk_asks_with_the_count_then_acts_on_exactly_those_runs(ui: Any) -> None:
    client, ops, _ = ui
    client.cookies.update((await client.post("/login", data={"token": "full"})).cookies)
    token = _csrf((await client.get("/runs")).text)
    ask = await client.post("/runs/bulk", data={"csrf": token, "action": "cancel", "workflow": "order"})
    assert ask.status_code == 200 and 'id="confirm-count">3<' in ask.text and ops.acted == []
    stale = await client.post(
        "/runs/bulk", data={"csrf": token, "action": "cancel", "workflow": "order", "confirm": "7"}
    )
    assert "changed" in stale.text and ops.acted == []
    done = await client.post(
        "/runs/bulk", data={"csrf": token, "action": "cancel", "workflow": "order", "confirm": "3"}
    )
    assert done.status_code == 200 and sorted(a[1] for a in ops.acted) == ["run-0", "run-1", "run-2"]
    api = await client.post(
        "/api/runs/bulk", json={"action": "rerun", "filter": {}}, headers={"Authorization": "Bearer full"}
    )
    assert api.status_code == 409 and api.json()["count"] == 2


async def test_metrics_label_requests_by_route_template(ui: Any) -> None:
    client, _, metrics = ui
    await client.get("/api/runs", headers={"Authorization": "Bearer look"})
    await client.get("/api/runs")
    await client.post("/api/runs/a/b/c/cancel", json={}, headers={"Authorization": "Bearer full"})
    value = metrics.registry.get_sample_value
    assert value("orchestrator_ui_requests_total", {"route": "/api/runs", "status": "200"}) == 1
    assert value("orchestrator_ui_requests_total", {"route": "(refused)", "status": "401"}) == 1
    assert (
        value(
            "orchestrator_ui_requests_total", {"route": "/api/runs/{run_id:path}/{action}", "status": "202"}
        )
        == 1
    )
    assert value("orchestrator_ui_request_duration_seconds_count", {"route": "/api/runs"}) == 1


async def test_pages_escape_what_they_show_and_forbid_framing() -> None:
    class Hostile(FakeRuns):
        def list(self, flt: RunFilter, cursor: str | None = None, limit: int = 50) -> RunPage:
            return RunPage(
                [RunSummary("<script>alert(1)</script>", "wf", "failed", 1, 2, error_message="<b>x")]
            )

    web = create_app(App("webtest"), Hostile(), UISettings(), ops=cast(Operations, FakeOps()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1"
    ) as client:
        page = await client.get("/runs")  # no token configured: open (local) mode
    assert page.status_code == 200
    assert (
        "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    )
    assert "<b>x" not in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


async def test_a_run_page_draws_every_kind_of_command() -> None:
    from orchestrator._core.state import (
        AttemptRecord,
        ChildRecord,
        MarkerRecord,
        RunState,
        RunStatus,
        StepKind,
        StepRecord,
        StepStatus,
        TimerRecord,
        WaitRecord,
    )
    from orchestrator._engine.events import Event, RunStarted

    state = RunState(
        "r-1",
        "wf",
        RunStatus.RUNNING,
        b"{}",
        1_000,
        9_000,
        steps=[
            StepRecord(
                0,
                "charge",
                "default",
                StepStatus.BACKOFF,
                2,
                b"[1]",
                1_000,
                due_ms=20_000,
                attempts=[AttemptRecord(1, 1_100, 1_200, "ConnectionError", "card <b>network</b>")],
            ),
            TimerRecord(1, StepStatus.COMPLETED, 1_300, 2_000),
            WaitRecord(2, StepStatus.WAITING, 2_100, "approved", "k-1"),
            ChildRecord(3, StepStatus.SCHEDULED, 2_200, "ship", "r-1/3", b"1"),
            MarkerRecord(4, 2_300, "new-pricing"),
            StepRecord(
                5,
                "unbook",
                "default",
                StepStatus.SCHEDULED,
                1,
                b"[]",
                2_400,
                kind=StepKind.COMPENSATION,
                undoes=0,
            ),
        ],
    )

    class Ops(FakeOps):
        def state(self, run_id: str, skipped: list[object]) -> RunState | None:
            return state if run_id == "r-1" else None

        def history(self, run_id: str, skipped: list[object]) -> list[Event]:
            return [Event("e0", "r-1", "wf", 1_000, RunStarted(b"{}"), 0)] if run_id == "r-1" else []

    web = create_app(App("webtest"), FakeRuns(), UISettings(), ops=cast(Operations, Ops()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1"
    ) as client:
        page = await client.get("/runs/r-1")
        missing = await client.get("/runs/nope")
    assert page.status_code == 200, page.text
    for position, seg in [
        (0, "failed"),
        (0, "backoff"),
        (1, "sleep"),
        (2, "wait"),
        (3, "child"),
        (4, "point"),
        (5, "queued"),
    ]:
        row = page.text.split(f'data-position="{position}"')[1].split('class="grow')[0]
        assert f'class="seg {seg}' in row, (position, seg)
    assert 'href="/runs/r-1/3"' in page.text and "undo #0" in page.text
    assert "card &lt;b&gt;network&lt;/b&gt;" in page.text and 'id="cancel"' in page.text
    assert missing.status_code == 404 and "no run" in missing.text
