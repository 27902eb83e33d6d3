"""The web UI in a real headless Chromium, against a real broker, processor, worker and UI server (each
its own process, as deployed): sign-in, the runs list and its filters, a run's timeline and history, cancel,
re-run, bulk cancel with its confirmation count, dead letters and re-drive, queues, read-only refusal.

Needs Debian's chromium (``./dev setup`` installs it); without it these tests fail, they do not skip.
With ``ORCHESTRATOR_UI_SCREENSHOTS=docs/screenshots`` the screenshots of docs/ui.md are written there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from engine_support import REPO, Bad, EngineProcess, free_ports, settings
from playwright.sync_api import Browser, Page, expect, sync_playwright

from orchestrator import App
from orchestrator.topology import inbox_topic

SPEC = "tests.integration.apps.ui_app:app"
CHROMIUM = "/usr/bin/chromium"
FULL, READ = "full-token-7c1", "read-token-93b"
WAIT = 60.0
expect.set_options(timeout=WAIT * 1000)  # pages read topics: on a loaded 2-core machine that takes seconds


@dataclass
class Stack:
    name: str
    base: str
    metrics: str
    bootstrap: str
    fix_file: Path
    app: App

    def start(self, workflow: str, value: int, run_id: str) -> None:
        async def go() -> None:
            async with self.app.client() as client:
                await client.start(workflow, value, run_id=run_id)

        # On a thread of its own: Playwright's sync API keeps an event loop running on the test's thread.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, go()).result(WAIT)

    def api(self, method: str, path: str, token: str = FULL, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, self.base + path, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]

    def status(self, run_id: str) -> str | None:
        body = self.api("GET", f"/api/runs/{run_id}").json()
        return body["run"]["status"] if body.get("run") else None

    def wait_status(self, run_id: str, status: str) -> None:
        deadline = time.monotonic() + WAIT
        while (now := self.status(run_id)) != status:
            assert time.monotonic() < deadline, f"{run_id} is {now}, not {status}, after {WAIT}s"
            time.sleep(0.3)


def _wait_http(url: str, proc: EngineProcess, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert proc.alive, f"the UI server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the UI server did not answer in {WAIT}s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Processor, worker and UI server for one app of this module's own, with runs of every kind."""
    tmp = tmp_path_factory.mktemp("ui")
    name = f"ui{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_ports(2)
    env = {
        "UI_APP_NAME": name,
        "UI_FIX_FILE": str(tmp / "fixed"),
        "ORCHESTRATOR_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ORCHESTRATOR_PARTITIONS": "4",
        "ORCHESTRATOR_UI__TOKEN": FULL,
        "ORCHESTRATOR_UI__READ_TOKEN": READ,
    }
    log = tmp / "engine.log"
    procs = [
        EngineProcess(
            "processor", SPEC, env, "--state-dir", str(tmp / "state"),
            "--http-port", "0", "--advertised-host", "127.0.0.1", log=log,
        ),
        EngineProcess("worker", SPEC, env, log=log),
    ]
    ui_log = tmp / "ui.log"
    ui = EngineProcess(
        "ui",
        "--app",
        env,
        SPEC,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        log=ui_log,
    )
    app = App(name, settings=settings(kafka_bootstrap))
    s = Stack(
        name,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{metrics_port}",
        kafka_bootstrap,
        tmp / "fixed",
        app,
    )
    try:
        for p in [*procs, ui]:
            p.start()
        _wait_http(s.base + "/healthz", ui, ui_log)
        for i in range(3):
            s.start("order", i, f"order-{i}")
        s.start("approval", 1, "approval-1")
        s.start("fragile", 1, "fragile-1")
        s.start("trip", 1, "trip-1")
        for run_id in ("order-0", "order-1", "order-2"):
            s.wait_status(run_id, "completed")
        s.wait_status("fragile-1", "failed")
        s.wait_status("trip-1", "failed")
        yield s
    finally:
        for p in [ui, *procs]:
            p.terminate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run ./dev setup (it installs Debian's chromium) or apt-get install chromium"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


SignIn = Callable[[str], Page]


@pytest.fixture
def signed_in(stack: Stack, browser: Browser) -> Iterator[SignIn]:
    pages: list[Page] = []

    def sign_in(token: str) -> Page:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(WAIT * 1000)
        pages.append(page)
        page.goto(stack.base + "/runs")
        expect(page).to_have_url(f"{stack.base}/login?next=/runs")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{stack.base}/runs")
        return page

    yield sign_in
    for page in pages:
        page.context.close()


def _reload_until(page: Page, selector: str, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in (page.text_content(selector) or ""):
        assert time.monotonic() < deadline, f"{selector} never showed {text!r}"
        time.sleep(0.5)
        page.reload()


def _shot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("ORCHESTRATOR_UI_SCREENSHOTS") or tmp_path)
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    assert (folder / f"{name}.png").stat().st_size > 10_000


def test_runs_list_filters_and_search(stack: Stack, signed_in: SignIn, tmp_path: Path) -> None:
    page = signed_in(FULL)
    rows = page.locator("#run-rows tr[data-run]")
    expect(page.locator("#run-rows tr[data-run='order-1']")).to_be_visible()
    assert rows.count() >= 9  # 3 orders and their 3 children, approval, fragile, trip
    _shot(page, "runs", tmp_path)

    page.select_option("select[name=workflow]", "order")
    page.click("#filters button[type=submit]")
    expect(page.locator("#run-count")).to_contain_text("3 runs match")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == ["order-0", "order-1", "order-2"]

    page.goto(stack.base + "/runs?status=failed")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == ["fragile-1", "trip-1"]
    page.goto(stack.base + "/runs?q=approval")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == ["approval-1"]
    page.goto(stack.base + "/runs?range=1h&workflow=trip")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == ["trip-1"]
    page.goto(stack.base + "/runs?until=2000-01-01T00:00")
    expect(page.locator("#run-count")).to_contain_text("0 runs match")
    page.goto(stack.base + "/runs?tags=plan%3Dfree")  # tags the workflow set (ctx.set_tags), from the index
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.run)")) == ["order-0", "order-2"]
    page.click("#run-rows tr[data-run='order-0'] a.tag:has-text('customer=c-0')")  # a tag is a filter
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == ["order-0"]
    page.goto(stack.base + "/runs?tags=team")
    expect(page.locator("#filter-error")).to_contain_text("tags:")

    page.goto(stack.base + "/runs?workflow=approval")
    expect(page.locator("#run-rows tr[data-run='approval-1']")).to_be_visible()
    loaded = page.evaluate("() => performance.timeOrigin")
    stack.start("approval", 5, "live-1")
    expect(page.locator("#run-rows tr[data-run='live-1']")).to_be_visible()  # polled in, no reload
    assert page.evaluate("() => performance.timeOrigin") == loaded


def test_a_run_shows_its_timeline_history_and_past_states(
    stack: Stack, signed_in: SignIn, tmp_path: Path
) -> None:
    page = signed_in(FULL)
    page.click("#run-rows a:text-is('order-1')")
    expect(page.locator("#run-status")).to_have_text("completed")
    timeline = page.locator("#timeline")
    # charge failed once, backed off, then succeeded; the sleep and the child run are there too
    expect(timeline.locator(".grow[data-position='0'] .seg.attempt")).to_have_count(1)
    expect(timeline.locator(".grow[data-position='1'] .seg.sleep")).to_have_count(1)
    charge = timeline.locator(".grow[data-position='2']")
    expect(charge.locator(".seg.failed")).to_have_count(1)
    expect(charge.locator(".seg.backoff")).to_have_count(1)
    expect(charge.locator(".seg.attempt")).to_have_count(1)
    assert "ConnectionError: card network timed out" in (
        charge.locator(".seg.failed").get_attribute("title") or ""
    )
    expect(page.locator("#run-result")).to_contain_text('"parcel": 10')
    expect(page.locator("#history tbody tr")).to_have_count(14)  # with TagsSet (ctx.set_tags)
    expect(page.locator("#run-tags")).to_have_text("customer=c-1plan=pro")
    _shot(page, "run", tmp_path)

    page.locator("#history a.at-link").nth(7).click()  # right after StepFailed of charge's first attempt
    expect(page.locator("#as-of")).to_contain_text("#7")
    expect(page.locator("#run-status")).to_have_text("running")
    expect(charge.locator(".seg.failed")).to_have_count(1)
    expect(charge.locator(".seg.attempt")).to_have_count(0)

    page.goto(stack.base + "/runs/order-1")
    page.click("#timeline a.child-link")
    expect(page.locator("#run-id")).to_have_text("order-1/3")
    expect(page.locator("#run-status")).to_have_text("completed")

    page.goto(stack.base + "/runs/trip-1")
    expect(page.locator("#timeline .grow.k-compensation")).to_contain_text("undo #0")
    expect(page.locator("#run-error")).to_contain_text("payment declined")
    # The failed attempt's traceback, from the run's history, under the step's error: opened, it names
    # the user's function and the line that raised.
    raised = next(
        n
        for n, line in enumerate((REPO / "tests/integration/apps/ui_app.py").read_text().splitlines(), 1)
        if 'raise TerminalError("payment declined")' in line
    )
    traceback = page.locator("#steps tr[data-position='1'] td.step-error details.traceback")
    traceback.locator("summary").click()
    expect(traceback.locator("pre")).to_be_visible()
    expect(traceback.locator("pre")).to_contain_text(f"line {raised}, in pay")
    expect(traceback.locator("pre")).to_contain_text("TerminalError: payment declined")


def test_cancel_a_waiting_run_and_signal_another(stack: Stack, signed_in: SignIn) -> None:
    stack.start("approval", 2, "approval-2")
    page = signed_in(FULL)
    page.goto(stack.base + "/runs/approval-1")
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#timeline .grow[data-position='0'] .seg.wait.open")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.fill("form[action$='/cancel'] input[name=reason]", "no longer needed")
    page.click("#cancel")
    expect(page.locator("#flash")).to_contain_text("cancel")
    stack.wait_status("approval-1", "cancelled")

    page.goto(stack.base + "/runs/approval-2")
    page.fill("form.signal input[name=name]", "approved")
    page.fill("form.signal input[name=payload]", '"ann"')
    page.click("#signal")
    stack.wait_status("approval-2", "completed")
    page.goto(stack.base + "/runs/approval-2")
    expect(page.locator("#run-result")).to_have_text('"approved by ann"')


def test_rerun_a_failed_run_after_the_fix(stack: Stack, signed_in: SignIn) -> None:
    page = signed_in(FULL)
    page.goto(stack.base + "/runs/fragile-1")
    expect(page.locator("#run-error")).to_contain_text("stock record 1 is corrupt")
    stack.fix_file.write_text("fixed")
    page.click("#rerun")
    stack.wait_status("fragile-1", "completed")
    page.goto(stack.base + "/runs/fragile-1")
    expect(page.locator("#run-result")).to_have_text('"ok"')


def test_bulk_cancel_shows_the_count_then_cancels_exactly_those(stack: Stack, signed_in: SignIn) -> None:
    for i in range(3):
        stack.start("approval", i, f"bulk-{i}")
    for i in range(3):
        stack.wait_status(f"bulk-{i}", "running")
    page = signed_in(FULL)
    page.goto(stack.base + "/runs?q=bulk-")
    page.select_option("#bulk select[name=action]", "cancel")
    page.click("#bulk button")
    expect(page.locator("#confirm-count")).to_have_text("3")
    for i in range(3):
        assert stack.status(f"bulk-{i}") == "running"  # nothing happens before the confirmation
    page.click("#confirm-button")
    expect(page.locator("#bulk-done")).to_contain_text("Asked to cancel 3 runs")
    for i in range(3):
        stack.wait_status(f"bulk-{i}", "cancelled")
    assert stack.status("approval-2") != "cancelled"


def test_dead_letters_are_listed_inspected_and_redriven(
    stack: Stack, signed_in: SignIn, tmp_path: Path
) -> None:
    Bad(stack.bootstrap).put("junk", inbox_topic(stack.name), b"not avro at all", "junk-key", 0)
    page = signed_in(FULL)
    page.goto(stack.base + "/dlq")
    _reload_until(page, "table.dlq tbody", "SchemaError")
    expect(page.locator("table.dlq tbody tr")).to_have_count(1)
    _shot(page, "dlq", tmp_path)
    page.click("table.dlq tbody a")
    expect(page.locator("dl.kv")).to_contain_text("bad magic byte")
    expect(page.locator("dl.kv")).to_contain_text("junk-key")
    page.goto(stack.base + "/dlq")
    page.check("table.dlq input[name=offset]")
    page.once("dialog", lambda d: d.accept())
    page.click("#redrive-button")
    expect(page.locator("#flash")).to_contain_text("redrove 1")
    # re-driven to the inbox, the junk is dead-lettered again: proof it went back where it came from
    deadline = time.monotonic() + WAIT
    while len(stack.api("GET", "/api/dlq").json()["letters"]) < 2:
        assert time.monotonic() < deadline, "the re-driven record was not dead-lettered again"
        time.sleep(0.5)


def test_queues_page_shows_every_partition_of_the_task_queue(
    stack: Stack, signed_in: SignIn, tmp_path: Path
) -> None:
    page = signed_in(FULL)
    page.goto(stack.base + "/queues")
    card = page.locator("section.queue[data-queue='default']")
    expect(card.locator("tbody tr")).to_have_count(4)
    expect(card.locator(".lag")).to_have_text("0")  # the worker consumed every command
    workers = page.locator("#workers tr.worker")
    expect(workers).to_have_count(1)  # the one worker process, holding all four task partitions
    expect(workers).to_contain_text(f"{stack.name}.tasks.default[3]")
    _shot(page, "queues", tmp_path)
    body = stack.api("GET", "/api/queues", READ).json()
    assert [p["partition"] for p in body["queues"][0]["partitions"]] == [0, 1, 2, 3]


def test_schedules_are_listed_paused_and_resumed(stack: Stack, signed_in: SignIn) -> None:
    page = signed_in(FULL)
    page.goto(stack.base + "/schedules")
    _reload_until(page, "table.schedules tbody", "yearly_report")
    row = page.locator("table.schedules tbody tr", has_text="yearly_report")
    expect(row).to_contain_text("0 0 1 1 *")
    expect(row).to_contain_text("active")
    row.locator("button", has_text="Pause").click()
    expect(page.locator("#flash")).to_contain_text("paused yearly_report")
    _reload_until(page, "table.schedules tbody", "paused")
    page.locator("table.schedules tbody tr", has_text="yearly_report").locator(
        "button", has_text="Resume"
    ).click()
    _reload_until(page, "table.schedules tbody", "active")


def test_wrong_token_is_refused_and_read_only_cannot_act(
    stack: Stack, browser: Browser, signed_in: SignIn
) -> None:
    stack.start("approval", 9, "approval-9")
    stack.wait_status("approval-9", "running")
    page = browser.new_page()
    try:
        page.goto(stack.base + "/runs")
        page.fill("input[name=token]", "guessed")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("not valid")
        assert page.goto(stack.base + "/runs/approval-9").url.startswith(stack.base + "/login")  # type: ignore[union-attr]
    finally:
        page.context.close()

    reader = signed_in(READ)
    reader.goto(stack.base + "/runs/approval-9")
    expect(reader.locator("#read-only")).to_be_visible()
    expect(reader.locator("#cancel")).to_have_count(0)
    # a hand-made post from the signed-in read-only browser is refused too
    status = reader.evaluate(
        "() => fetch('/runs/approval-9/cancel', {method: 'POST', body: 'csrf=x',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}}).then(r => r.status)"
    )
    assert status == 403
    assert stack.api("POST", "/api/runs/approval-9/cancel", READ, json={}).status_code == 403
    assert stack.api("GET", "/api/runs", "wrong").status_code == 401
    time.sleep(1)
    assert stack.status("approval-9") == "running"
    assert stack.api("POST", "/api/runs/approval-9/cancel", FULL, json={"reason": "api"}).status_code == 202
    stack.wait_status("approval-9", "cancelled")


def test_metrics_count_requests_by_route(stack: Stack) -> None:
    stack.api("GET", "/api/runs")
    with urllib.request.urlopen(stack.metrics + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'orchestrator_ui_requests_total{route="/api/runs",status="200"}' in text
    assert 'orchestrator_ui_request_duration_seconds_bucket{le="0.005",route="/api/runs"}' in text


def test_an_open_ui_refuses_a_public_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_UI__")}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "ui", "--app", SPEC, "--host", "0.0.0.0", "--port", "0"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stdout + done.stderr
