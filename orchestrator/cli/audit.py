"""CLI: history, export, replay, recovery (resume / re-run) and the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import topology
from orchestrator._engine import audit, kafka, wire
from orchestrator._engine.events import Event
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import DeadLetter, decode_dead_letter
from orchestrator._engine.state import RunState, attempts_of
from orchestrator._engine.unreadable import Unreadable, decoded
from orchestrator.app import App
from orchestrator.cli import _json
from orchestrator.cli._json import JsonFlag
from orchestrator.cli._unreadable import EXIT_DIFFERENCES, EXIT_UNREADABLE, SkipReport, stderr
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
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='One JSON object per event; unreadable records as {"type": "unreadable", ...}.',
            callback=_json.remember,
        ),
    ] = False,
    app_spec: AppOption = None,
) -> None:
    """Every event of RUN_ID in order, with times, inputs and outputs, attempts, durations and errors.

    Unreadable records of the run are shown where they are and skipped. Exit codes: 0 all read; 2 no such
    run; 3 unreadable records were skipped.
    """
    app = _app(app_spec)
    report = SkipReport(quiet=True)  # shown in place, in the table or the JSON Lines
    rows: list[Event | Unreadable] = []
    # The reader calls back before it yields the next event, so rows keep the topic's order.
    skipped = report.collector(also=rows.append)
    rows.extend(audit.history_events(app, run_id=run_id, on_unreadable=skipped))
    if not rows:
        raise _fail(f"no history for run {run_id!r} in app {app.name!r}")
    if as_json:
        for row in rows:
            out = row.as_json() if isinstance(row, Unreadable) else audit.event_json(row)
            sys.stdout.write(json.dumps(out) + "\n")
    else:
        table = Table("seq", "time (UTC)", "event", "details")
        for row in rows:
            if isinstance(row, Unreadable):
                what = f"{row.where}: {row.reason}: {row.detail}"
                table.add_row("?", "", "[red]unreadable[/red]", escape(what))
                continue
            body = audit.event_json(row)["body"]
            details = ", ".join(f"{k}={_short(v)}" for k, v in body.items() if k not in ("idempotency_key",))
            table.add_row(str(row.seq), _when(row.timestamp_ms), row.kind, escape(details))
        console.print(table)
    report.print_summary()
    raise typer.Exit(report.exit_code())


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
    as_json: JsonFlag = False,
    app_spec: AppOption = None,
) -> None:
    """Export history events (a run, a workflow, or a time range), streaming, to JSON Lines or Avro.

    The file holds events only: unreadable records are reported on stderr (topic, partition, offset,
    why), left out of the file, and counted at the end. Exit codes: 0 every record exported; 2 usage
    error; 3 unreadable records were skipped.
    """
    app = _app(app_spec)
    if fmt not in ("jsonl", "avro"):
        raise _fail("--format is jsonl or avro")
    until_ms = _ms(until)
    report = SkipReport()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr if as_json else console,  # stdout holds only the JSON summary
    ) as bar:
        task = bar.add_task("exporting", total=None)

        def progress(n: int) -> None:
            bar.update(task, description=f"exporting: {n} events read")

        events = (
            e
            for e in audit.history_events(
                app, run_id=run_id, since_ms=_ms(since), progress=progress, on_unreadable=report.collector()
            )
            if (workflow is None or e.workflow == workflow)
            and (until_ms is None or e.timestamp_ms <= until_ms)
        )
        with out.open("wb") as fh:
            count = audit.export_jsonl(events, fh) if fmt == "jsonl" else audit.export_avro(events, fh)
    if as_json:
        doc = {
            "out": str(out),
            "format": fmt,
            "events": count,
            "unreadable": _json.unreadable(report.records),
        }
        _json.emit(doc)
        report.print_summary()
    else:
        console.print(f"wrote {count} events to {out} ({fmt}); {report.summary()}")
    raise typer.Exit(report.exit_code())


def replay(
    run_id: Annotated[str | None, typer.Argument(help="With --at: show this run as it stood then.")] = None,
    at: Annotated[str | None, typer.Option(help="Point in time (ISO) for RUN_ID.")] = None,
    since: Annotated[str | None, typer.Option(help="Replay history from this time (ISO) only.")] = None,
    check: Annotated[
        str | None, typer.Option(help="MODULE:APP of new code to re-execute against recorded runs.")
    ] = None,
    open_only: Annotated[bool, typer.Option("--open", help="With --check: only runs still open.")] = False,
    sample: Annotated[int | None, typer.Option(help="With --check: at most this many runs.")] = None,
    as_json: JsonFlag = False,
    app_spec: AppOption = None,
) -> None:
    """Rebuild every run's state from the history topic alone and compare it with the live state.

    Unreadable records (and events that do not fold into their run) are reported on stderr and skipped;
    a run with one is listed as not verifiable, never as a difference. Exit codes: 0 every run matched;
    1 a difference (or, with --check, a run that would diverge); 2 usage error; 3 no difference, but
    unreadable records were skipped. Usable in CI.
    """
    app = _app(app_spec)
    report = SkipReport()
    if check is not None:
        raise typer.Exit(_check(app, _app(check), open_only, sample, report, as_json))
    if at is not None:
        if run_id is None:
            raise _json.fail("--at needs a RUN_ID") if as_json else _fail("--at needs a RUN_ID")
        raise typer.Exit(_at(app, run_id, at, report, as_json))
    since_ms = _ms(since)
    started = datetime.now(tz=UTC)
    rebuilt = audit.rebuild_history(app, report.collector(), since_ms=since_ms)
    seconds = (datetime.now(tz=UTC) - started).total_seconds()
    live_skips = report.collector()
    live = audit.live_states(app, on_unreadable=live_skips)
    live_unreadable = {k: f"live state: {v}" for k, v in audit.changelog_run_ids(live_skips).items()}
    if since_ms is not None:
        window = set(rebuilt) | set(rebuilt.unverifiable)
        live = {k: v for k, v in live.items() if k in window}
        live_unreadable = {k: v for k, v in live_unreadable.items() if k in window}
    verdict = audit.judge(rebuilt, live, live_unreadable)
    events = sum(s.next_seq for s in rebuilt.values())
    code = EXIT_DIFFERENCES if verdict.differences else report.exit_code()
    if as_json:
        _json.emit(
            {
                "mode": "replay",
                **_json.times("since", since_ms),
                "runs": len(rebuilt),
                "events": events,
                "seconds": round(seconds, 3),
                "compared": verdict.compared,
                "differences": [
                    {
                        "run_id": d.run_id,
                        "field": d.field,
                        "replayed": _json.plain(d.replayed),
                        "live": _json.plain(d.live),
                    }
                    for d in verdict.differences
                ],
                "not_verifiable": [
                    {"run_id": k, "reason": v} for k, v in sorted(verdict.unverifiable.items())
                ],
                "began_before_since": sorted(rebuilt.began_before),
                "unreadable": _json.unreadable(report.records),
            }
        )
        report.print_summary()
        raise typer.Exit(code)
    for d in verdict.differences[:200]:
        console.print(f"[red]{d.run_id}[/red] {d.field}: replayed={_short(d.replayed)} live={_short(d.live)}")
    for rid, why in sorted(verdict.unverifiable.items())[:200]:
        console.print(f"[yellow]{escape(rid)}[/yellow] not verifiable: {escape(why)}")
    before = f", {len(rebuilt.began_before)} began before --since" if rebuilt.began_before else ""
    console.print(
        f"replayed {len(rebuilt)} run(s), {events} events in {seconds:.2f}s "
        f"({events / seconds if seconds else 0:.0f} events/s): {verdict.compared} compared, "
        f"{len(verdict.differences)} difference(s), "
        f"{len(verdict.unverifiable)} run(s) not verifiable{before}; {report.summary()}"
    )
    raise typer.Exit(code)


def _check(
    app: App, new_app: App, open_only: bool, sample: int | None, report: SkipReport, as_json: bool = False
) -> int:
    """``replay --check``: re-execute new code against the recorded runs; the exit code."""
    states = audit.live_states(app, on_unreadable=report.collector())
    if open_only:
        states = {k: v for k, v in states.items() if v.status in ("running", "parked")}
    if sample is not None:
        states = dict(list(states.items())[:sample])
    divergences = audit.check_code(new_app, states)
    code = EXIT_DIFFERENCES if divergences else report.exit_code()
    if as_json:
        _json.emit(
            {
                "mode": "check",
                "checked": len(states),
                "divergences": [
                    {"run_id": dv.run_id, "workflow": dv.workflow, "message": dv.message}
                    for dv in divergences
                ],
                "unreadable": _json.unreadable(report.records),
            }
        )
        report.print_summary()
        return code
    table = Table("run id", "workflow", "first difference")
    for dv in divergences:
        table.add_row(dv.run_id, dv.workflow, escape(dv.message))
    console.print(table)
    console.print(f"checked {len(states)} run(s): {len(divergences)} would diverge; {report.summary()}")
    return code


def _at(app: App, run_id: str, at: str, report: SkipReport, as_json: bool = False) -> int:
    """``replay RUN_ID --at TIME``: the run as it stood then; the exit code."""
    at_ms = _ms(at)
    rebuilt = audit.rebuild_history(app, report.collector(), run_id=run_id, until_ms=at_ms)
    why = rebuilt.unverifiable.get(run_id)
    if as_json:
        return _at_json(run_id, at_ms, rebuilt.get(run_id), why, report)
    if why is not None:
        console.print(f"[yellow]{escape(run_id)}[/yellow] not verifiable: {escape(why)}")
        report.print_summary()
        return EXIT_UNREADABLE
    state = rebuilt.get(run_id)
    if state is None:
        report.print_summary()
        if report.records:
            return EXIT_UNREADABLE
        raise _fail(f"run {run_id!r} did not exist at {at}")
    console.print(f"[bold]{run_id}[/bold] at {at}: status={state.status}, steps:")
    for s in state.steps:
        console.print(f"  #{s.position} {s.kind} {s.name}: {s.status} (attempt {attempts_of(s)[0]})")
    report.print_summary()
    return report.exit_code()


def _at_json(
    run_id: str, at_ms: int | None, state: RunState | None, why: str | None, report: SkipReport
) -> int:
    """``replay RUN_ID --at TIME --json``: the run as it stood then (``run`` as in ``runs show``)."""
    head = {"mode": "at", "run_id": run_id, **_json.times("at", at_ms)}
    unreadable = _json.unreadable(report.records)
    if why is not None:
        _json.emit({**head, "run": None, "not_verifiable": why, "unreadable": unreadable})
        report.print_summary()
        return EXIT_UNREADABLE
    if state is None and not report.records:
        raise _json.fail(f"run {run_id!r} did not exist at {head['at']}", **head, run=None, unreadable=[])
    run = None if state is None else _json.run_json(state)
    _json.emit({**head, "run": run, "not_verifiable": None, "unreadable": unreadable})
    report.print_summary()
    return report.exit_code()


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
    """Resume a parked run after a fix (or all parked runs).

    Exit codes: 0 done; 2 usage error; 3 with --all-parked, unreadable run states were skipped (reported).
    """
    app = _app(app_spec)
    if not run_id and not all_parked:
        raise _fail("name a RUN_ID or pass --all-parked")
    report = SkipReport()
    ids = [run_id] if run_id else _run_ids(app, workflow, "parked", report)

    async def go() -> None:
        async with app.client() as client:
            for rid in ids:
                await client.resume(rid, reason)

    asyncio.run(go())
    console.print(f"asked to resume {len(ids)} run(s)")
    report.print_summary()
    raise typer.Exit(report.exit_code())


def _run_ids(app: App, workflow: str | None, status: str, report: SkipReport) -> list[str]:
    """Ids of the runs of ``workflow`` (or all) in ``status``, oldest first; unreadable states reported."""
    states = audit.live_states(app, on_unreadable=report.collector())
    chosen = [s for s in states.values() if s.status == status and workflow in (None, s.workflow)]
    return [s.run_id for s in sorted(chosen, key=lambda s: s.created_ms)]


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
    """Re-run a failed run from its failed step; completed steps keep their recorded results.

    Exit codes: 0 done; 2 usage error; 3 with --all-failed, unreadable run states were skipped (reported).
    """
    app = _app(app_spec)
    if not run_id and not all_failed:
        raise _fail("name a RUN_ID or pass --all-failed")
    report = SkipReport()
    ids = [run_id] if run_id else _run_ids(app, workflow, "failed", report)

    async def go() -> None:
        async with app.client() as client:
            for rid in ids:
                await client.rerun(rid, from_position, reason)

    asyncio.run(go())
    console.print(f"asked to re-run {len(ids)} run(s)")
    report.print_summary()
    raise typer.Exit(report.exit_code())


dlq_app = typer.Typer(help="The dead-letter topic: list, inspect, re-drive.", no_args_is_help=True)


def _letters(app_spec: str | None, report: SkipReport) -> list[tuple[int, DeadLetter]]:
    """Every readable dead letter with its offset; unreadable ones go to ``report``."""
    app = _app(app_spec)
    topic = topology.dlq_topic(app.name)
    msgs = read_partitions(app.settings, topic, [0])
    return [
        (where.offset, letter)
        for where, letter in decoded(msgs, decode_dead_letter, wire.DEAD_LETTER, report.collector())
    ]


def _letter_json(offset: int, d: DeadLetter) -> dict[str, Any]:
    return {
        "offset": offset,
        **_json.times("time", d.timestamp_ms),
        "source_topic": d.source_topic,
        "source_partition": d.source_partition,
        "source_offset": d.source_offset,
        "component": d.component,
        "error_type": d.error_type,
        "reason": d.reason,
        "key": _json.text(d.key),
        "value": _json.text(d.value),
    }


@dlq_app.command("list")
def dlq_list(as_json: JsonFlag = False, app_spec: AppOption = None) -> None:
    """Every dead letter with where it came from and why.

    Exit codes: 0 all read; 3 unreadable records were skipped (each reported on stderr).
    """
    report = SkipReport()
    letters = _letters(app_spec, report)
    if as_json:
        doc = {
            "dead_letters": [_letter_json(offset, d) for offset, d in letters],
            "unreadable": _json.unreadable(report.records),
        }
        _json.emit(doc)
        report.print_summary()
        raise typer.Exit(report.exit_code())
    table = Table("offset", "time (UTC)", "from", "error", "reason")
    for offset, d in letters:
        source = f"{d.source_topic}[{d.source_partition}]@{d.source_offset}"
        table.add_row(
            str(offset), _when(d.timestamp_ms), escape(source), d.error_type, escape(d.reason[:120])
        )
    console.print(table)
    console.print(f"{len(letters)} dead letter(s); {report.summary()}")
    raise typer.Exit(report.exit_code())


@dlq_app.command("show")
def dlq_show(offset: int, as_json: JsonFlag = False, app_spec: AppOption = None) -> None:
    """One dead letter in full.

    Exit codes: 0 shown; 2 no dead letter at OFFSET; 3 the record at OFFSET is unreadable (reported).
    """
    report = SkipReport(quiet=True)
    for off, d in _letters(app_spec, report):
        if off == offset:
            if as_json:
                _json.emit({"dead_letter": _letter_json(off, d), "unreadable": []})
                return
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
    bad = next((b for b in report.records if b.where.offset == offset), None)
    if bad is not None:
        stderr.print(f"[red]unreadable[/red] {escape(str(bad))}")
        if as_json:
            _json.emit({"dead_letter": None, "unreadable": [bad.as_json()]})
        raise typer.Exit(EXIT_UNREADABLE)
    if as_json:
        raise _json.fail(f"no dead letter at offset {offset}", dead_letter=None, unreadable=[])
    raise _fail(f"no dead letter at offset {offset}")


@dlq_app.command("redrive")
def dlq_redrive(
    offsets: Annotated[list[int] | None, typer.Argument(help="Offsets to re-drive (default: all).")] = None,
    app_spec: AppOption = None,
) -> None:
    """Produce dead letters back to the topic and partition they came from (after a fix).

    An unreadable dead letter cannot be re-driven (where it came from is inside it): it is reported and
    left in place. Exit codes: 0 all re-driven; 3 unreadable records were skipped.
    """
    app = _app(app_spec)
    report = SkipReport()
    chosen = [(o, d) for o, d in _letters(app_spec, report) if not offsets or o in offsets]
    producer = kafka.new_producer(kafka.producer_config(app.settings))
    for _, d in chosen:
        producer.produce(d.source_topic, d.value, d.key, partition=d.source_partition)
    producer.flush(30)
    console.print(f"re-drove {len(chosen)} record(s); {report.summary()}")
    raise typer.Exit(report.exit_code())


def register(app: typer.Typer) -> None:
    app.command()(history)
    app.command()(export)
    app.command()(replay)
    app.add_typer(dlq_app, name="dlq")
