"""The public client on the real broker with bad records among real runs: it reports each one and carries on.

Junk bytes and records with an unknown schema id land on the changelog (run states), on the keyed
changelog (schedules) and on the outcomes topic, among runs a real processor and worker ran. The client's
reads list everything readable and hand the rest to ``on_unreadable`` (or log it); a waiting ``result()``
still gets its run's outcome; ``orchestrator runs cancel --all`` cancels what it can read and exits 3.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from engine_support import Bad, engine, settings
from typer.testing import CliRunner, Result

from orchestrator import (
    App,
    Client,
    OrchestratorError,
    RunFailedError,
    RunTimeoutError,
    SchemaError,
    WorkflowContext,
)
from orchestrator._engine import audit
from orchestrator._engine import events as ev
from orchestrator._engine.events import Event, encode_event
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.records import RunOutcome, encode_outcome
from orchestrator._engine.state import RunState, encode_state
from orchestrator._engine.unreadable import (
    JUNK,
    NOT_A_SCHEDULE,
    TRUNCATED,
    UNKNOWN_SCHEMA,
    WRONG_TYPE,
    Skipped,
    Unreadable,
)
from orchestrator.cli import app as cli
from orchestrator.cli._unreadable import EXIT_OK, EXIT_UNREADABLE
from orchestrator.topology import changelog_topic, keyed_changelog_topic, outcomes_topic


def _app(name: str, bootstrap: str) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def double(i: int) -> int:
        return i * 2

    @app.workflow
    async def two_steps(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(double, await ctx.step(double, i))

    @app.workflow
    async def waits(ctx: WorkflowContext, i: int) -> int:
        got = await ctx.wait_for_event("go", timeout=3600)
        return int(got.payload) + i

    @app.workflow
    async def holds(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("never", timeout=3600)

    @app.workflow(schedule="0 9 1 1 *")  # registered when the processor starts, never due in the test
    async def yearly(ctx: WorkflowContext) -> None:
        return None

    return app


def _unknown_schema(record: bytes) -> bytes:
    """``record`` as if a newer engine had written it: same body, a schema id this engine does not know."""
    return b"\x00" + struct.pack(">I", 4242) + record[5:]


def _all_or_nothing(bad: Unreadable) -> None:
    raise SchemaError(f"unreadable record {bad}")


def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 60  # only so that a broken engine fails the test instead of hanging it
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _waiting(app: App, run_id: str) -> bool:
    return "WaitStarted" in [e.kind for e in audit.history_events(app, run_id=run_id)]


async def _real_runs(app: App) -> None:
    """Completed runs c0..c2, runs w0..w2 and h0 waiting (their state final until an event), a schedule."""
    async with app.client() as client:
        done = [await client.start("two_steps", i, run_id=f"c{i}") for i in range(3)]
        for i, handle in enumerate(done):
            assert await handle.result(timeout=60) == i * 4
        for i in range(3):
            await client.start("waits", i, run_id=f"w{i}")
        await client.start("holds", run_id="h0")
    for run_id in ("w0", "w1", "w2", "h0"):
        _until(lambda run_id=run_id: _waiting(app, run_id), f"{run_id} to wait")
    _until(lambda: audit.schedules(app), "the schedule")


def _bad_states_and_schedules(app: App, bad: Bad) -> None:
    parts = app.settings.partitions
    changelog = changelog_topic(app.name)
    bad.put("c1-junk", changelog, b"junk", "r/c1", partition_for("c1", parts))
    state = encode_state(RunState("w1", "waits", "running", b"1", 1, 1))
    bad.put("w1-unknown", changelog, _unknown_schema(state), "r/w1", partition_for("w1", parts))
    schedules = keyed_changelog_topic(app.name)
    bad.put("weekly-junk", schedules, b"{not json", "c/weekly", 0)
    bad.put("monthly-unknown", schedules, _unknown_schema(state), "c/monthly", 1)


async def _client_reads(app: App, bad: Bad, caplog: pytest.LogCaptureFixture) -> None:
    async with app.client() as client:
        # list_runs: the readable runs, the two unreadable states reported where they are and why.
        skipped = Skipped()
        runs = await client.list_runs(on_unreadable=skipped)
        assert sorted(r.run_id for r in runs) == ["c0", "c2", "h0", "w0", "w2"]
        assert {(str(u.where), u.reason) for u in skipped.records} == {
            (bad.landed["c1-junk"], JUNK),
            (bad.landed["w1-unknown"], UNKNOWN_SCHEMA),
        }
        assert sorted(r.run_id for r in await client.list_runs(workflow="waits", status="running")) == [
            "w0",
            "w2",
        ]
        # Without a callback: logged as warnings on the client's logger, one per record, and carried on.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="orchestrator.client"):
            assert len(await client.list_runs()) == 5
        logged = [r.getMessage() for r in caplog.records if r.name == "orchestrator.client"]
        assert len(logged) == 2 and any(bad.landed["c1-junk"] in m and JUNK in m for m in logged), logged
        # A callback that raises ends the read: all or nothing, for a caller who wants that.
        with pytest.raises(SchemaError, match="unreadable"):
            await client.list_runs(on_unreadable=_all_or_nothing)

        # describe: a readable run as before; an unreadable one is None, reported.
        desc = await client.describe("c0")
        assert desc is not None and desc.status == "completed"
        one = Skipped()
        assert await client.describe("c1", on_unreadable=one) is None
        assert [(str(u.where), u.reason) for u in one.records] == [(bad.landed["c1-junk"], JUNK)]
        assert await client.get_handle("w1").describe() is None  # logged

        # list_schedules: the real schedule; the two bad records reported as not schedules.
        bad_schedules = Skipped()
        listed = await client.list_schedules(on_unreadable=bad_schedules)
        assert [s["workflow"] for s in listed] == ["yearly"]
        assert sorted(str(u.where) for u in bad_schedules.records) == sorted(
            [bad.landed["weekly-junk"], bad.landed["monthly-unknown"]]
        )
        assert {u.reason for u in bad_schedules.records} == {NOT_A_SCHEDULE}
        assert [s["workflow"] for s in await client.list_schedules()] == ["yearly"]

        # result() of a handle whose run's state cannot be read: it waits for the outcome, and its
        # timeout says why it could not tell whether the run had ended (instead of a SchemaError).
        with pytest.raises(RunTimeoutError, match="unreadable"):
            await client.get_handle("c1").result(timeout=1)
        assert await client.get_handle("c2").result(timeout=30) == 8


async def _outcome_junk_does_not_break_waiters(app: App, bad: Bad) -> None:
    """Junk on the outcomes topic, keyed by an awaited run, before its real outcome: both waiters get it."""
    parts = app.settings.partitions
    seen = Skipped()

    def seen_then_raise(bad: Unreadable) -> None:  # a failing callback must not stop the results either
        seen(bad)
        raise RuntimeError("a callback bug")

    # The starter awaits the run from its start on, so it meets every junk record below; the other client
    # (a handle from the run id, which asks the changelog first) may start waiting before or after them.
    async with Client(app, on_unreadable=seen_then_raise) as starter, app.client() as other:
        handle = await starter.start("waits", 7, run_id="late")
        _until(lambda: _waiting(app, "late"), "late to wait")
        waiters = [
            asyncio.ensure_future(handle.result(timeout=60)),
            asyncio.ensure_future(other.get_handle("late", "waits").result(timeout=60)),
        ]
        topic, p = outcomes_topic(app.name), partition_for("late", parts)
        outcome = encode_outcome(RunOutcome("late", "waits", "completed", 1, b"1"))
        bad.put("outcome-junk", topic, b"\x13 not avro", "late", p)
        bad.put("outcome-unknown", topic, _unknown_schema(outcome), "late", p)
        bad.put("outcome-truncated", topic, outcome[:-3], "late", p)
        event = encode_event(Event("e", "late", "waits", 1, ev.RunCompleted(b"1"), seq=9))
        bad.put("outcome-wrong-type", topic, event, "late", p)
        bad.put("outcome-no-key", topic, b"junk", None, p)
        await starter.signal("late", "go", 100)
        assert await asyncio.gather(*waiters) == [107, 107]
    reported = {(str(u.where), u.reason) for u in seen.records}
    assert {
        (bad.landed["outcome-junk"], JUNK),
        (bad.landed["outcome-unknown"], UNKNOWN_SCHEMA),
        (bad.landed["outcome-truncated"], TRUNCATED),
        (bad.landed["outcome-wrong-type"], WRONG_TYPE),
    } <= reported, reported


async def _cancel_many(app: App, bad: Bad) -> None:
    async with app.client() as client:
        skipped = Skipped()
        asked = await client.cancel_many(workflow="waits", on_unreadable=skipped)
        assert sorted(asked) == ["w0", "w2"]
        # Whether an unreadable state matches the filter is unknown: both are reported, neither cancelled.
        assert {str(u.where) for u in skipped.records} == {bad.landed["w1-unknown"], bad.landed["c1-junk"]}
        for run_id in asked:
            with pytest.raises(RunFailedError) as failed:
                await client.get_handle(run_id).result(timeout=60)
            assert failed.value.status == "cancelled"


async def _cancelled(app: App, run_id: str) -> str:
    async with app.client() as client:
        with pytest.raises(RunFailedError) as failed:
            await client.get_handle(run_id).result(timeout=60)
        return failed.value.status


def test_client_carries_on_past_unreadable_records(
    kafka_bootstrap: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not an async test: the CLI runs its own event loop, as from a shell.
    app = _app(unique_name, kafka_bootstrap)
    bad = Bad(kafka_bootstrap)
    module = types.ModuleType(f"client_unreadable_{unique_name}")
    module.app = app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec = f"{module.__name__}:app"

    def run(*args: str) -> Result:
        result = CliRunner().invoke(cli, [*args, "--app", spec])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    def said(text: str) -> str:
        return " ".join(text.split())  # rich wraps long lines

    with engine(app, tmp_path):
        asyncio.run(_real_runs(app))
        _bad_states_and_schedules(app, bad)
        asyncio.run(_client_reads(app, bad, caplog))
        asyncio.run(_outcome_junk_does_not_break_waiters(app, bad))
        asyncio.run(_cancel_many(app, bad))

        # runs cancel --all: cancels the one running run it can read (h0), reports w1's state, exits 3.
        cancelled = run("runs", "cancel", "--all")
        assert cancelled.exit_code == EXIT_UNREADABLE, cancelled.output
        assert "asked to cancel 1 run(s): h0" in said(cancelled.stdout)
        assert bad.landed["w1-unknown"] in said(cancelled.stderr) and UNKNOWN_SCHEMA in said(cancelled.stderr)
        assert "2 unreadable record(s) skipped" in said(cancelled.stderr)
        assert asyncio.run(_cancelled(app, "h0")) == "cancelled"
        by_workflow = run("runs", "cancel", "--workflow", "waits")
        assert by_workflow.exit_code == EXIT_UNREADABLE
        assert "asked to cancel 0 run(s)" in said(by_workflow.stdout)
        assert run("runs", "cancel", "--workflow", "two_steps").exit_code == EXIT_UNREADABLE  # c1's state
        assert run("runs", "cancel", "c0").exit_code == EXIT_OK  # one run by id reads nothing

        # start --wait: junk about the run on the outcomes topic is reported, the result still comes.
        helper = threading.Thread(target=_junk_then_signal, args=(app, bad, "s1"), daemon=True)
        helper.start()
        started = run("start", "waits", "--input", "1", "--run-id", "s1", "--wait")
        helper.join(60)
        assert started.exit_code == EXIT_UNREADABLE, started.output
        assert "101" in started.stdout and bad.landed["s1-junk"] in said(started.stderr)
        assert "1 unreadable record(s) skipped (1 junk bytes)" in said(started.stderr)
        assert run("start", "two_steps", "--input", "2", "--wait").exit_code == EXIT_OK


def _junk_then_signal(app: App, bad: Bad, run_id: str) -> None:
    """Once ``run_id`` waits (so a client waiting for it is tailing the outcomes): junk keyed by it, then
    the event that lets it end."""
    _until(lambda: _waiting(app, run_id), f"{run_id} to wait")
    p = partition_for(run_id, app.settings.partitions)
    bad.put(f"{run_id}-junk", outcomes_topic(app.name), b"junk", run_id, p)

    async def go() -> None:
        async with app.client() as client:
            await client.signal(run_id, "go", 100)

    asyncio.run(go())


def test_a_stopped_outcome_watcher_fails_waiting_results_instead_of_hanging(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(unique_name, kafka_bootstrap)  # no engine: the run never ends, only the watcher matters

    def broken(msg: Any) -> None:
        raise RuntimeError("a bug in the watcher")

    async def go() -> None:
        async with app.client() as client:
            handle = await client.start("holds", run_id="forever")
            watcher = client._ensure_watcher()
            monkeypatch.setattr(watcher, "_take", broken)
            waiting = asyncio.ensure_future(handle.result(timeout=120))
            p = partition_for("forever", app.settings.partitions)
            Bad(kafka_bootstrap).put("any", outcomes_topic(app.name), b"x", "forever", p)
            with pytest.raises(OrchestratorError, match=r"outcome watcher stopped.*a bug in the watcher"):
                await waiting
            with pytest.raises(OrchestratorError, match="outcome watcher stopped"):  # at once from now on
                await client.get_handle("other").result(timeout=120)

    asyncio.run(go())


def test_a_result_timeout_names_the_unreadable_outcome_of_its_run(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """E.g. a newer engine's outcome: skipped, so the wait times out, and the timeout says what it skipped."""
    app = _app(unique_name, kafka_bootstrap)  # no engine: nothing but the unreadable record will come
    seen = Skipped()

    async def go() -> None:
        async with Client(app, on_unreadable=seen) as client:
            handle = await client.start("holds", run_id="newer")
            outcome = encode_outcome(RunOutcome("newer", "holds", "completed", 1, b"null"))
            p = partition_for("newer", app.settings.partitions)
            bad = Bad(kafka_bootstrap)
            bad.put("newer-outcome", outcomes_topic(app.name), _unknown_schema(outcome), "newer", p)
            await asyncio.to_thread(_until, lambda: len(seen) == 1, "the watcher to skip it")
            with pytest.raises(RunTimeoutError) as timed_out:
                await handle.result(timeout=0.1)
            assert bad.landed["newer-outcome"] in str(timed_out.value)
            assert UNKNOWN_SCHEMA in str(timed_out.value)

    asyncio.run(go())
