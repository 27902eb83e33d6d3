"""CLI: history, export, replay, recovery (resume / re-run) and the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import topology
from orchestrator._engine import audit, kafka
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import decode_dead_letter
from orchestrator.cli.engine import AppOption, _app, _fail, runs_app

console = Console()


def _ms(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(f"not an ISO time: {text!r} (e.g. 2026-11-22T10:00:00+00:00)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def history(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    app_spec: AppOption = None,
) -> None:
    """Every event of RUN_ID in order, with times, inputs and outputs, attempts, durations and errors."""
    app = _app(app_spec)
    events = list(audit.history_events(app, run_id=run_id))
    if not events:
        raise _fail(f"no history for run {run_id!r} in app {app.name!r}")
    if as_json:
        for event in events:
            sys.stdout.write(json.dumps(audit.event_json(event)) + "\n")
        return
    table = Table("seq", "time (UTC)", "event", "details")
    for event in events:
        body = audit.event_json(event)["body"]
        details = ", ".join(f"{k}={_short(v)}" for k, v in body.items() if k not in ("idempotency_key",))
        table.add_row(str(event.seq), _when(event.timestamp_ms), event.kind, details)
    console.print(table)


def _short(value: Any) -> str:
    text = json.dumps(value["json"]) if isinstance(value, dict) and "json" in value else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl or avro (an Avro container, schema embedded).")
    ] = "jsonl",
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (ISO).")] = None,
    app_spec: AppOption = None,
) -> None:
    """Export history events (a run, a workflow, or a time range), streaming, to JSON Lines or Avro."""
    app = _app(app_spec)
    if fmt not in ("jsonl", "avro"):
        raise _fail("--format is jsonl or avro")
    until_ms = _ms(until)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("exporting", total=None)

        def progress(n: int) -> None:
            bar.update(task, description=f"exporting: {n} events read")

        events = (
            e
            for e in audit.history_events(app, run_id=run_id, since_ms=_ms(since), progress=progress)
            if (workflow is None or e.workflow == workflow)
            and (until_ms is None or e.timestamp_ms <= until_ms)
        )
        with out.open("wb") as fh:
            count = audit.export_jsonl(events, fh) if fmt == "jsonl" else audit.export_avro(events, fh)
    console.print(f"wrote {count} events to {out} ({fmt})")


def replay(
    run_id: Annotated[str | None, typer.Argument(help="With --at: show this run as it stood then.")] = None,
    at: Annotated[str | None, typer.Option(help="Point in time (ISO) for RUN_ID.")] = None,
    since: Annotated[str | None, typer.Option(help="Replay history from this time (ISO) only.")] = None,
    check: Annotated[
        str | None, typer.Option(help="MODULE:APP of new code to re-execute against recorded runs.")
    ] = None,
    open_only: Annotated[bool, typer.Option("--open", help="With --check: only runs still open.")] = False,
    sample: Annotated[int | None, typer.Option(help="With --check: at most this many runs.")] = None,
    app_spec: AppOption = None,
) -> None:
    """Rebuild every run's state from the history topic alone and compare it with the live state.

    Exit code 1 when anything differs (or, with --check, when any run would diverge): usable in CI.
    """
    app = _app(app_spec)
    if check is not None:
        new_app = _app(check)
        states = audit.live_states(app)
        if open_only:
            states = {k: v for k, v in states.items() if v.status in ("running", "parked")}
        if sample is not None:
            states = dict(list(states.items())[:sample])
        divergences = audit.check_code(new_app, states)
        table = Table("run id", "workflow", "first difference")
        for dv in divergences:
            table.add_row(dv.run_id, dv.workflow, dv.message)
        console.print(table)
        console.print(f"checked {len(states)} run(s): {len(divergences)} would diverge")
        raise typer.Exit(1 if divergences else 0)
    if at is not None:
        if run_id is None:
            raise _fail("--at needs a RUN_ID")
        state = audit.rebuild(audit.history_events(app, run_id=run_id), until_ms=_ms(at)).get(run_id)
        if state is None:
            raise _fail(f"run {run_id!r} did not exist at {at}")
        console.print(f"[bold]{run_id}[/bold] at {at}: status={state.status}, steps:")
        for s in state.steps:
            console.print(f"  #{s.position} {s.kind} {s.step}: {s.status} (attempt {s.attempt})")
        return
    started = datetime.now(tz=UTC)
    replayed = audit.rebuild(audit.history_events(app, since_ms=_ms(since)))
    seconds = (datetime.now(tz=UTC) - started).total_seconds()
    live = audit.live_states(app)
    if since is not None:
        live = {k: v for k, v in live.items() if k in replayed}
    diffs = audit.compare(replayed, live)
    for d in diffs[:200]:
        console.print(f"[red]{d.run_id}[/red] {d.field}: replayed={_short(d.replayed)} live={_short(d.live)}")
    events = sum(s.next_seq for s in replayed.values())
    console.print(
        f"replayed {len(replayed)} run(s), {events} events in {seconds:.2f}s "
        f"({events / seconds if seconds else 0:.0f} events/s): {len(diffs)} difference(s)"
    )
    raise typer.Exit(1 if diffs else 0)


@runs_app.command("resume")
def runs_resume(
    run_id: Annotated[str | None, typer.Argument()] = None,
    all_parked: Annotated[
        bool, typer.Option("--all-parked", help="Every parked run (of --workflow).")
    ] = False,
    workflow: str | None = None,
    reason: str = "resumed from the CLI",
    app_spec: AppOption = None,
) -> None:
    """Resume a parked run after a fix (or all parked runs)."""
    app = _app(app_spec)

    async def go() -> list[str]:
        async with app.client() as client:
            ids = (
                [run_id]
                if run_id
                else [r.run_id for r in await client.list_runs(workflow=workflow, status="parked")]
            )
            if not run_id and not all_parked:
                raise _fail("name a RUN_ID or pass --all-parked")
            for rid in ids:
                await client.resume(rid, reason)
            return ids

    ids: list[str] = asyncio.run(go())
    console.print(f"asked to resume {len(ids)} run(s)")


@runs_app.command("rerun")
def runs_rerun(
    run_id: Annotated[str | None, typer.Argument()] = None,
    from_position: Annotated[
        int | None, typer.Option("--from", help="Step position (default: the failed step).")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed run (of --workflow).")
    ] = False,
    workflow: str | None = None,
    reason: str = "re-run from the CLI",
    app_spec: AppOption = None,
) -> None:
    """Re-run a failed run from its failed step; completed steps keep their recorded results."""
    app = _app(app_spec)

    async def go() -> list[str]:
        async with app.client() as client:
            if not run_id and not all_failed:
                raise _fail("name a RUN_ID or pass --all-failed")
            ids = (
                [run_id]
                if run_id
                else [r.run_id for r in await client.list_runs(workflow=workflow, status="failed")]
            )
            for rid in ids:
                await client.rerun(rid, from_position, reason)
            return ids

    ids: list[str] = asyncio.run(go())
    console.print(f"asked to re-run {len(ids)} run(s)")


dlq_app = typer.Typer(help="The dead-letter topic: list, inspect, re-drive.", no_args_is_help=True)


def _letters(app_spec: str | None) -> list[tuple[int, Any]]:
    app = _app(app_spec)
    topic = topology.dlq_topic(app.name)
    return [
        (m.offset() or 0, decode_dead_letter(m.value()))
        for m in read_partitions(app.settings.bootstrap_servers, topic, [0])
    ]


@dlq_app.command("list")
def dlq_list(app_spec: AppOption = None) -> None:
    """Every dead letter with where it came from and why."""
    table = Table("offset", "time (UTC)", "from", "error", "reason")
    letters = _letters(app_spec)
    for offset, d in letters:
        source = f"{d.source_topic}[{d.source_partition}]@{d.source_offset}"
        table.add_row(str(offset), _when(d.timestamp_ms), source, d.error_type, d.reason[:120])
    console.print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(offset: int, app_spec: AppOption = None) -> None:
    """One dead letter in full."""
    for off, d in _letters(app_spec):
        if off == offset:
            console.print_json(
                data={
                    "source": f"{d.source_topic}[{d.source_partition}]@{d.source_offset}",
                    "component": d.component,
                    "error_type": d.error_type,
                    "reason": d.reason,
                    "key": d.key.decode(errors="replace") if d.key else None,
                    "value": d.value.decode(errors="replace") if d.value else None,
                }
            )
            return
    raise _fail(f"no dead letter at offset {offset}")


@dlq_app.command("redrive")
def dlq_redrive(
    offsets: Annotated[list[int] | None, typer.Argument(help="Offsets to re-drive (default: all).")] = None,
    app_spec: AppOption = None,
) -> None:
    """Produce dead letters back to the topic and partition they came from (after a fix)."""
    app = _app(app_spec)
    producer = Producer(kafka.producer_config(app.settings.bootstrap_servers))
    chosen = [(o, d) for o, d in _letters(app_spec) if not offsets or o in offsets]
    for _, d in chosen:
        producer.produce(d.source_topic, d.value, d.key, partition=d.source_partition)
    producer.flush(30)
    console.print(f"re-drove {len(chosen)} record(s)")


def register(app: typer.Typer) -> None:
    app.command()(history)
    app.command()(export)
    app.command()(replay)
    app.add_typer(dlq_app, name="dlq")
