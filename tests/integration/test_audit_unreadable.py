"""The audit commands on the real broker with bad records among good ones: each bad record is reported with
its coordinates, the good runs still come out right, and the exit code says records were skipped."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from engine_support import Bad, engine, settings
from typer.testing import CliRunner, Result

from orchestrator import App, WorkflowContext
from orchestrator._engine import audit
from orchestrator._engine import events as ev
from orchestrator._engine.events import Event, encode_event
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.state import RunState, encode_state
from orchestrator._engine.unreadable import (
    JUNK,
    NOT_A_SCHEDULE,
    NOT_FOLDING,
    TRUNCATED,
    UNKNOWN_SCHEMA,
    WRONG_TYPE,
    Skipped,
)
from orchestrator.cli import app as cli
from orchestrator.cli._unreadable import EXIT_OK, EXIT_UNREADABLE
from orchestrator.topology import (
    changelog_topic,
    dlq_topic,
    history_topic,
    inbox_topic,
    keyed_changelog_topic,
)

GOOD = ("u0", "u3", "u5")


def _app(name: str, bootstrap: str) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def double(i: int) -> int:
        return i * 2

    @app.workflow
    async def two_steps(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(double, await ctx.step(double, i))

    @app.workflow(schedule="0 9 1 1 *")  # registered when the processor starts, never due in the test
    async def yearly(ctx: WorkflowContext) -> None:
        return None

    @app.workflow
    async def waits(ctx: WorkflowContext, i: int) -> int:
        got = await ctx.wait_for_event("go", timeout=3600)
        return int(got.payload) + await ctx.step(double, i)

    return app


def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 60  # only so that a broken engine fails the test instead of hanging it
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _event(run_id: str, seq: int, body: object) -> bytes:
    return encode_event(Event(f"{run_id}/{seq}", run_id, "two_steps", int(time.time() * 1000), body, seq=seq))


async def _real_runs_among_bad_records(app: App, bad: Bad, state_dir: Path) -> None:
    """Six completed runs and one (mid) with junk in the middle of its history, among bad records, a dead
    letter and a schedule; the engine is stopped on return."""
    history, parts = history_topic(app.name), app.settings.partitions
    with engine(app, state_dir):
        async with app.client() as client:
            handles = [await client.start("two_steps", i, run_id=f"u{i}") for i in range(6)]
            waiting = await client.start("waits", 5, run_id="mid")
            for i, handle in enumerate(handles):
                assert await handle.result(timeout=60) == i * 4
            _until(
                lambda: "WaitStarted" in [e.kind for e in audit.history_events(app, run_id="mid")],
                "mid to wait",
            )
            # In the middle of mid's history (it is waiting), and after the end of u1's and u2's.
            bad.put("junk", history, b"\x13 this is not avro", "mid", partition_for("mid", parts))
            unknown = b"\x00" + struct.pack(">I", 4242) + _event("u1", 9, ev.RunCompleted(b"1"))[5:]
            bad.put("unknown", history, unknown, "u1", partition_for("u1", parts))
            truncated = _event("u2", 9, ev.RunCompleted(b"12345678"))[:-4]
            bad.put("truncated", history, truncated, "u2", partition_for("u2", parts))
            state = RunState("x", "two_steps", "running", b"", 1, 1)
            bad.put("wrong-type", history, encode_state(state), None, 0)
            not_folding = _event("ghost", 0, ev.StepCompleted(0, 1, b"1", 1, 2))
            bad.put("not-folding", history, not_folding, "ghost", partition_for("ghost", parts))
            bad.put("inbox-junk", inbox_topic(app.name), b"junk", "nobody", 0)  # dead-lettered
            await client.signal("mid", "go", 100)
            assert await waiting.result(timeout=60) == 110
            dlq = dlq_topic(app.name)
            _until(lambda: any(read_partitions(app.settings, dlq, [0])), "the dead letter")
            _until(lambda: audit.schedules(app), "the schedule")


def test_audit_commands_report_unreadable_records_and_carry_on(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not an async test: some commands (runs resume) run their own event loop, as from a shell.
    app = _app(unique_name, kafka_bootstrap)
    parts = app.settings.partitions
    bad = Bad(kafka_bootstrap)
    asyncio.run(_real_runs_among_bad_records(app, bad, tmp_path))
    bad.put("dlq-junk", dlq_topic(app.name), b"\x00\x00", None, 0)
    bad.put("state-junk", changelog_topic(app.name), b"junk", "r/u4", partition_for("u4", parts))
    bad.put("schedule-junk", keyed_changelog_topic(app.name), b"{not json", "c/weekly", 0)

    module = types.ModuleType(f"audit_unreadable_{unique_name}")
    module.app = app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec = f"{module.__name__}:app"

    def run(*args: str) -> Result:
        result = CliRunner().invoke(cli, [*args, "--app", spec])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    def said(text: str) -> str:
        return " ".join(text.split())  # rich wraps long lines

    def reported(result: Result, label: str, reason: str) -> bool:
        return f"{bad.landed[label]}" in said(result.stderr) and reason in said(result.stderr)

    # replay: every bad record reported where it is; the good runs verified; the others not verifiable.
    replayed = run("replay")
    assert replayed.exit_code == EXIT_UNREADABLE, replayed.output
    for label, reason in [
        ("junk", JUNK),
        ("unknown", UNKNOWN_SCHEMA),
        ("truncated", TRUNCATED),
        ("wrong-type", WRONG_TYPE),
        ("not-folding", NOT_FOLDING),
        ("state-junk", JUNK),
    ]:
        assert reported(replayed, label, reason), (label, replayed.stderr)
    out = said(replayed.stdout)
    for run_id in ("mid", "u1", "u2", "ghost", "u4"):
        assert f"{run_id} not verifiable" in out, (run_id, out)
    assert "0 difference(s), 5 run(s) not verifiable" in out and "6 unreadable record(s) skipped" in out
    assert "replayed 4 run(s)" in out  # u0, u3, u4 (whose live state is unreadable) and u5
    assert "3 compared" in out  # u0, u3, u5
    # The same verdict from the library, for the record.
    skipped = Skipped()
    rebuilt = audit.rebuild_history(app, skipped)
    assert sorted(rebuilt) == ["u0", "u3", "u4", "u5"]
    assert sorted(rebuilt.unverifiable) == ["ghost", "mid", "u1", "u2"] and len(skipped) == 5

    # replay --check with the same code: nothing diverges, the unreadable live state is reported.
    checked = run("replay", "--check", spec)
    assert checked.exit_code == EXIT_UNREADABLE and reported(checked, "state-junk", JUNK)
    assert "0 would diverge" in said(checked.stdout)

    # replay RUN_ID --at: a good run shows, a run with a hole is not verifiable.
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 60))
    at_good = run("replay", "u0", "--at", now)
    assert at_good.exit_code == EXIT_OK and "status=completed" in at_good.stdout
    at_mid = run("replay", "mid", "--at", now)
    assert at_mid.exit_code == EXIT_UNREADABLE and "mid not verifiable" in said(at_mid.stdout)

    # history --json: the unreadable record in its place among mid's events.
    shown = run("history", "mid", "--json")
    assert shown.exit_code == EXIT_UNREADABLE
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    kinds = [r["type"] for r in rows]
    assert kinds.index("WaitStarted") < kinds.index("unreadable") < kinds.index("EventReceived")
    junk_row = rows[kinds.index("unreadable")]
    assert f"{junk_row['topic']}[{junk_row['partition']}]@{junk_row['offset']}" == bad.landed["junk"]
    assert junk_row["reason"] == JUNK and junk_row["key"] == "mid"
    assert "1 unreadable record(s) skipped" in said(shown.stderr)
    table = run("history", "mid")
    assert table.exit_code == EXIT_UNREADABLE and bad.landed["junk"] in said(table.stdout)
    assert run("history", "u0").exit_code == EXIT_OK

    # export: every readable event in the file, the rest reported and counted.
    exported = tmp_path / "all.jsonl"
    result = run("export", "--out", str(exported))
    assert result.exit_code == EXIT_UNREADABLE
    for label in ("junk", "unknown", "truncated", "wrong-type"):
        assert bad.landed[label] in said(result.stderr), label
    assert "4 unreadable record(s) skipped" in said(result.stdout)
    events = [json.loads(line) for line in exported.read_text().splitlines()]
    by_run: dict[str, list[int]] = {}
    for e in events:
        by_run.setdefault(e["run_id"], []).append(e["seq"])
    assert sorted(by_run) == ["ghost", "mid", "u0", "u1", "u2", "u3", "u4", "u5"]
    assert all(seqs == list(range(len(seqs))) for seqs in by_run.values())
    one = tmp_path / "u0.avro"
    assert run("export", "--out", str(one), "--format", "avro", "--run", "u0").exit_code == EXIT_OK

    # runs list / show: the run whose latest state is junk is reported, the others listed.
    listed = run("runs", "list", "--from-changelog")
    assert listed.exit_code == EXIT_UNREADABLE and reported(listed, "state-junk", JUNK)
    assert all(r in listed.stdout for r in ("u0", "u5", "mid")) and "6 run(s) match" in said(listed.stdout)
    assert run("runs", "show", "u4").exit_code == EXIT_UNREADABLE
    assert run("runs", "show", "u0").exit_code == EXIT_OK
    resumed = run("runs", "resume", "--all-parked")  # there are none; the junk state is still reported
    assert resumed.exit_code == EXIT_UNREADABLE and reported(resumed, "state-junk", JUNK)

    # dlq: the real dead letter listed, the junk one reported.
    letters = run("dlq", "list")
    assert letters.exit_code == EXIT_UNREADABLE and reported(letters, "dlq-junk", JUNK)
    assert "1 dead letter(s)" in said(letters.stdout)
    junk_offset = bad.landed["dlq-junk"].rsplit("@", 1)[1]
    assert run("dlq", "show", junk_offset).exit_code == EXIT_UNREADABLE
    assert run("dlq", "show", "0").exit_code == EXIT_OK
    redriven = run("dlq", "redrive")  # the real letter goes back to the inbox; the junk one cannot
    assert redriven.exit_code == EXIT_UNREADABLE and "re-drove 1 record(s)" in said(redriven.stdout)

    # schedules list: the real schedule listed, the junk one reported.
    listed = run("schedules", "list")
    assert listed.exit_code == EXIT_UNREADABLE and reported(listed, "schedule-junk", NOT_A_SCHEDULE)
    assert "yearly" in listed.stdout and "0 9 1 1 *" in listed.stdout
