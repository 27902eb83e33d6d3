"""CLI: run processors and workers, start runs, look at runs."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator._engine import audit, tracebacks
from orchestrator._engine.loading import load_app
from orchestrator._engine.state import RunState, attempts_of
from orchestrator.app import App
from orchestrator.cli import _json
from orchestrator.cli._json import JsonFlag
from orchestrator.cli._unreadable import SkipReport
from orchestrator.client import Client, RunDescription
from orchestrator.settings import Settings

console = Console()

MetricsPortOption = Annotated[
    int | None,
    typer.Option(help="Serve Prometheus metrics on this port at /metrics (docs/metrics.md); off by default."),
]
MetricsHostOption = Annotated[str, typer.Option(help="Address the metrics endpoint listens on.")]

AppOption = Annotated[
    str | None, typer.Option("--app", "-a", help="MODULE:ATTRIBUTE of your App (or env ORCHESTRATOR_APP).")
]


LogLevelOption = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        help="debug, info, warning or error [default: ORCHESTRATOR_LOG_LEVEL, else info; --verbose: debug].",
        show_default=False,
    ),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="text, or json: one JSON object per line on stderr, librdkafka's lines included "
        "[default: ORCHESTRATOR_LOG_FORMAT, else text].",
        show_default=False,
    ),
]


def _logging(
    verbose: bool, level: str | None = None, fmt: str | None = None, settings: Settings | None = None
) -> None:
    """Logs on stderr as the command line says, else as the app's settings (``ORCHESTRATOR_LOG_*``) say.

    ``text``: Rich on a terminal, one plain line per record otherwise; ``json``: one object per line
    (``orchestrator._logging``). A bad level or format is a usage error (exit 2).
    """
    from orchestrator._logging import configure_logging
    from orchestrator.cli._root import explicit

    chosen = settings or Settings()
    root_level, root_format = explicit()  # orchestrator --log-level ... processor: kept unless given here
    if level is None:
        level = "DEBUG" if verbose else root_level or chosen.log_level
    fmt = fmt or root_format
    try:
        configure_logging(level, fmt or chosen.log_format)
    except ValueError as exc:
        raise _fail(str(exc)) from exc


def _tracing(service: str) -> None:
    """OpenTelemetry traces, when the OTEL_* variables ask for them (docs/tracing.md)."""
    from orchestrator._engine.tracing_setup import configure_from_env

    configure_from_env(service)


def _fail(message: str) -> typer.Exit:
    """A usage error (exit 2), said on stderr: stdout stays the command's output (``--json``: JSON only)."""
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _app(spec: str | None) -> App:
    try:
        return load_app(spec)
    except ValueError as exc:
        raise _fail(str(exc)) from exc


def processor(
    app_spec: Annotated[str, typer.Argument(metavar="MODULE:APP", help="Your App, e.g. examples.orders:app")],
    instance_id: Annotated[
        str | None, typer.Option(help="Stable instance name (default: host name).")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the RocksDB stores live.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most inbox records per transaction.")] = 500,
    batch_linger_ms: Annotated[
        int,
        typer.Option(
            help="Wait up to this long for more records before each transaction: fewer, larger "
            "transactions (less broker and processor CPU per run) for this much added latency per step."
        ),
    ] = 0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "0.0.0.0",
    http_port: Annotated[
        int | None,
        typer.Option(
            help="Serve run queries (`runs list`, the UI), /healthz and /ready on this port; 0: any free "
            "port. Off when absent."
        ),
    ] = None,
    http_host: Annotated[str, typer.Option(help="Address the HTTP server binds.")] = "0.0.0.0",
    advertised_host: Annotated[
        str | None,
        typer.Option(
            help="Host query clients connect to (default: this host's address on the network of the brokers)."
        ),
    ] = None,
    standby_replicas: Annotated[
        int,
        typer.Option(
            min=0,
            envvar="ORCHESTRATOR_STANDBY_REPLICAS",
            help="Keep this many warm copies of each partition's stores on other processors, so a "
            "takeover restores only the changelog's tail (costs disk, a consumer, broker reads; ADR 0024).",
        ),
    ] = 0,
    early_dispatch: Annotated[
        bool,
        typer.Option(
            help="Experimental: send step commands to workers while their transaction commits (each "
            "acknowledged before it commits; ADR 0025). Default: inside the transaction."
        ),
    ] = False,
    state_cleanup_delay: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="ORCHESTRATOR_STATE_CLEANUP_DELAY",
            help="With standby replicas: delete a partition's store directory once it has been neither "
            "active nor a standby here for this many seconds (keep it well below the changelogs' "
            "delete.retention.ms; ADR 0024).",
        ),
    ] = 600.0,
    verbose: bool = False,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run a processor: folds events into run state and drives workflows, exactly once."""
    from orchestrator._engine.processor import Processor, ProcessorConfig
    from orchestrator.errors import ProcessorFencedError

    app = _app(app_spec)
    _logging(verbose, log_level, log_format, app.settings)
    _tracing("orchestrator-processor")
    _tune_gc()
    cfg: dict[str, Any] = {"max_batch": max_batch, "batch_linger_ms": batch_linger_ms}
    cfg["early_dispatch"] = early_dispatch
    cfg.update(http_port=http_port, http_host=http_host, advertised_host=advertised_host)
    cfg["standby_replicas"] = standby_replicas
    cfg["state_cleanup_delay_s"] = state_cleanup_delay
    if instance_id:
        cfg["instance_id"] = instance_id
    if state_dir:
        cfg["state_dir"] = state_dir
    proc = Processor(app, ProcessorConfig(**cfg))
    _serve_metrics(metrics_port, metrics_host)
    threading.Thread(target=_report, args=(proc,), daemon=True).start()
    try:
        proc.run()
    except ProcessorFencedError as exc:
        raise _fail(str(exc)) from exc


def _serve_metrics(port: int | None, host: str) -> None:
    """Start the /metrics endpoint when asked to; a port already taken is a usage error, said plainly."""
    if port is None:
        return
    from orchestrator._engine.metrics import serve_metrics

    try:
        server = serve_metrics(port, host)
    except OSError as exc:
        raise _fail(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    logging.getLogger("orchestrator").info("metrics at http://%s:%d/metrics", host, server.server_port)


def _tune_gc() -> None:
    """Collect garbage less often in the long-running engine processes.

    Every transition resumes a workflow coroutine on its own small event loop, which leaves reference
    cycles behind; with CPython's default thresholds (700 allocations) the collector runs thousands of
    times a second and each full pass walks every long-lived object. Freezing what start-up loaded (the
    app, the libraries) and raising the first threshold cut a simulated processor's CPU per 5-step run by
    10-20 % (see BENCHMARKS.md). Only the CLI does this: an embedding program keeps its
    own settings.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _report(proc: Any) -> None:
    log = logging.getLogger("orchestrator.processor")
    last = 0
    while True:
        time.sleep(5)
        s = proc.stats
        if s.events != last:
            log.info(
                "events=%d timers=%d transactions=%d dead_letters=%d ignored=%d cached_runs=%d",
                s.events,
                s.timers,
                s.transactions,
                s.dead_letters,
                s.ignored,
                len(proc.runs.instances),
            )
            last = s.events


def worker(
    app_spec: Annotated[str, typer.Argument(metavar="MODULE:APP")],
    queue: Annotated[list[str] | None, typer.Option(help="Task queue(s) to serve (default: all).")] = None,
    concurrency: Annotated[int, typer.Option(help="Steps running at once.")] = 64,
    instance_id: Annotated[
        str | None, typer.Option(help="Stable name for static group membership (e.g. the pod name).")
    ] = None,
    delivery_timeout_ms: Annotated[
        int,
        typer.Option(
            help="How long one try to deliver a step's result may take before it is produced again "
            "(results are held until delivered, whatever the outage; the step never runs again)."
        ),
    ] = 30_000,
    buffer: Annotated[
        int | None,
        typer.Option(
            help="Records taken ahead of a free slot (default: --concurrency); 0 pauses and seeks back at "
            "every full house instead (ADR 0025)."
        ),
    ] = None,
    stats_interval_ms: Annotated[
        int, typer.Option(help="librdkafka statistics interval; fetch counts are logged at stop (0 = off).")
    ] = 0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "0.0.0.0",
    verbose: bool = False,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run a worker: executes steps from the task queues and reports results."""
    import signal

    from orchestrator._engine.worker import Worker, WorkerConfig, WorkerFailedError

    app = _app(app_spec)
    _logging(verbose, log_level, log_format, app.settings)
    _tracing("orchestrator-worker")
    _tune_gc()
    w = Worker(
        app,
        WorkerConfig(
            queues=tuple(queue) if queue else None,
            concurrency=concurrency,
            instance_id=instance_id,
            delivery_timeout_ms=delivery_timeout_ms,
            buffer=buffer,
            stats_interval_ms=stats_interval_ms,
        ),
    )
    _serve_metrics(metrics_port, metrics_host)
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    try:
        asyncio.run(w.run())
    except WorkerFailedError as exc:
        raise _fail(str(exc)) from exc


def start(
    workflow: Annotated[str, typer.Argument(help="Workflow name.")],
    input_json: Annotated[str, typer.Option("--input", "-i", help="Input as JSON.")] = "null",
    run_id: Annotated[str | None, typer.Option(help="Run id (same id twice = one run).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result.")] = False,
    timeout: float = 60.0,
    as_json: JsonFlag = False,
    app_spec: AppOption = None,
) -> None:
    """Start a run of WORKFLOW.

    With --wait, an unreadable record met on the outcomes topic under the run's id is reported on stderr
    and skipped, and the wait goes on for the run's real outcome. Exit codes: 0 started (and, with --wait,
    completed); 2 usage error, or the run failed or timed out; 3 completed, but unreadable records about
    it were skipped. --json: ``{"run_id", "workflow", "status", "result", "unreadable"}`` (docs/cli-json.md).
    """
    from orchestrator.errors import OrchestratorError

    _tracing("orchestrator-cli")
    app = _app(app_spec)
    try:
        value = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise _fail(f"--input is not JSON: {exc}") from exc
    report = SkipReport()
    started: dict[str, Any] = {"run_id": run_id, "workflow": workflow, "status": None, "result": None}

    async def go() -> None:
        async with Client(app, on_unreadable=report.collector()) as client:
            handle = await client.start(workflow, value, run_id=run_id)
            started.update(run_id=handle.run_id, status="started")
            if not as_json:
                console.print(f"started run [bold]{handle.run_id}[/bold] of {workflow}")
            if wait:
                result = await handle.result(timeout=timeout)
                started.update(status="completed", result={"json": _json.plain(result)})
                if not as_json:
                    console.print_json(data=result)

    try:
        asyncio.run(go())
    except OrchestratorError as exc:
        report.print_summary()
        if as_json:
            raise _json.fail(str(exc), **started, unreadable=_json.unreadable(report.records)) from exc
        raise _fail(str(exc)) from exc
    if as_json:
        _json.emit({**started, "unreadable": _json.unreadable(report.records)})
    report.print_summary()
    raise typer.Exit(report.exit_code())


runs_app = typer.Typer(help="Look at runs.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="running | compensating | completed | failed | cancelled | parked | unreadable"),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="key=value; repeat to require several tags.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created at or after: 1h (ago), ISO time, epoch ms.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Created before: 1h (ago), ISO time, epoch ms.")] = None,
    error_type: Annotated[str | None, typer.Option(help="Only runs that ended with this error type.")] = None,
    run_id_prefix: Annotated[str | None, typer.Option(help="Only run ids starting with this.")] = None,
    limit: Annotated[int, typer.Option(help="Runs per page (at most 1000).")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="Where the page starts (printed by the last one).")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON document: runs, next_cursor, missing_partitions, warning.",
            callback=_json.remember,  # a Kafka failure is then an error document too (root handler)
        ),
    ] = False,
    from_changelog: Annotated[
        bool, typer.Option(help="Scan the changelog topic instead (no processor needed; slow on big apps).")
    ] = False,
    app_spec: AppOption = None,
) -> None:
    """List runs, newest first, from the processors' run indexes (started with --http-port).

    Each processor answers for the partitions it owns; the first page comes without reading any topic.
    Exit codes: 0 all partitions answered; 5 some did not (named on stderr and in the JSON document: their
    runs are missing); 2 bad options; 4 Kafka could not be reached or a request failed; with
    --from-changelog, 3 when unreadable records were skipped.
    """
    from orchestrator._engine.queries.fanout import FanOutRunQuery
    from orchestrator.cli import _runs_query

    app = _app(app_spec)
    try:
        flt = _runs_query.run_filter(workflow, status, error_type, tag or [], since, until, run_id_prefix)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if from_changelog:
        if cursor:
            raise _fail(
                "--cursor pages the processors' indexes: --from-changelog lists the first --limit runs"
            )
        _runs_from_changelog(app, flt, limit, as_json)
        return
    query = FanOutRunQuery(app.settings, app)
    try:
        page = query.list(flt, cursor, limit)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    finally:  # a KafkaException goes on to the root handler: exit 4 and, under --json, its error document
        query.close()
    raise typer.Exit(_runs_query.print_page(console, page, as_json, app.settings.partitions))


def _runs_from_changelog(app: App, flt: Any, limit: int, as_json: bool = False) -> None:
    """The old scan of the whole changelog (every call reads the topic): for when no processor runs.
    ``--json``: the document of ``runs list --json`` (no cursor, no missing partitions), plus ``unreadable``.
    """
    from orchestrator._engine.queries.index import matches, parse_summary, summary_of

    report = SkipReport()
    states = audit.live_states(app, on_unreadable=report.collector())
    rows = [parse_summary(s.run_id, summary_of(s)) for s in states.values()]
    runs = sorted((r for r in rows if matches(flt, r)), key=lambda r: (-r.created_ms, r.run_id))
    if as_json:
        _json.emit(
            {
                "runs": [r.to_json() for r in runs[:limit]],
                "next_cursor": None,
                "missing_partitions": [],
                "warning": None,
                "unreadable": _json.unreadable(report.records),
            }
        )
        report.print_summary()
        raise typer.Exit(report.exit_code())
    descs = {r.run_id: RunDescription.from_state(states[r.run_id]) for r in runs[:limit]}
    table = Table("run id", "workflow", "status", "steps", "created", "updated", "error")
    for r in runs[:limit]:
        d = descs[r.run_id]
        table.add_row(
            d.run_id,
            d.workflow,
            _status(d.status),
            str(len(d.steps)),
            f"{d.created:%H:%M:%S.%f}"[:-3],
            f"{d.updated:%H:%M:%S.%f}"[:-3],
            d.error_type,
        )
    console.print(table)
    console.print(f"{len(runs)} run(s) match, newest first; {report.summary()}")
    raise typer.Exit(report.exit_code())


@runs_app.command("show")
def runs_show(run_id: str, as_json: JsonFlag = False, app_spec: AppOption = None) -> None:
    """One run: state, result or error, every step with its attempts, and the last failure's traceback.

    Exit codes: 0 shown; 2 no such run; 3 the run's latest state record, or a record of its history read
    for the last failure, is unreadable (reported).
    """
    app = _app(app_spec)
    report = SkipReport()
    state = audit.live_state(app, run_id, on_unreadable=report.collector())
    if as_json:
        if state is None and not report.records:
            raise _json.fail(f"no run {run_id!r} in app {app.name!r}", run=None, unreadable=[])
        run = None if state is None else _json.run_json(state)
        failure = None if state is None else _last_failure(app, state, report)
        _json.emit({"run": run, "last_failure": failure, "unreadable": _json.unreadable(report.records)})
        report.print_summary()
        raise typer.Exit(report.exit_code())
    if state is None:
        if report.records:
            report.print_summary()
            raise typer.Exit(report.exit_code())
        raise _fail(f"no run {run_id!r} in app {app.name!r}")
    desc = RunDescription.from_state(state)
    console.print(f"[bold]{desc.run_id}[/bold]  workflow={desc.workflow}  status={_status(desc.status)}")
    console.print(f"created {desc.created.isoformat()}  updated {desc.updated.isoformat()}")
    if desc.error_type:
        console.print(f"[red]{desc.error_type}[/red]: {desc.error_message}")
    if desc.result_bytes is not None:
        console.print(f"result: {desc.result_bytes.decode(errors='replace')}")
    table = Table("#", "step", "status", "attempts", "duration ms", "errors")
    for s in desc.steps:
        table.add_row(
            str(s.position),
            s.step,
            _status(s.status),
            str(s.attempts),
            "" if s.duration_ms is None else str(s.duration_ms),
            "\n".join(s.attempt_errors),
        )
    console.print(table)
    failure = _last_failure(app, state, report)
    if failure is not None:
        where = f"#{failure['position']} {failure['step']} attempt {failure['attempt']}"
        console.print(
            f"last failure, {where}: {failure['error_type']}: {failure['error_message']}", markup=False
        )
        if failure["traceback"]:
            console.print(failure["traceback"].rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
    report.print_summary()
    raise typer.Exit(report.exit_code())


def _last_failure(app: App, state: RunState, report: SkipReport) -> dict[str, Any] | None:
    """The run's last failed attempt as its history recorded it (``StepFailed``), traceback included.

    The traceback lives in the history only (not in the run's state), so this reads the run's history
    partition, and only when the state shows a failed attempt: ``runs show`` of a run that never failed
    costs no extra read. None when nothing failed, or only timeouts did (they raise nothing to trace).
    """
    if not any(a.error_type for s in state.steps for a in attempts_of(s)[1]):
        return None
    history = audit.history_events(app, run_id=state.run_id, on_unreadable=report.collector())
    found = tracebacks.failures(history)
    if not found:
        return None
    f = found[-1]
    return {
        "seq": f.seq,
        "position": f.position,
        "step": state.steps[f.position].name if 0 <= f.position < len(state.steps) else "",
        "attempt": f.attempt,
        "error_type": f.error_type,
        "error_message": f.message,
        "retryable": f.retryable,
        "worker": f.worker,
        **_json.times("finished", f.finished_ms),
        "traceback": f.traceback,
    }


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str | None, typer.Argument(help="The run to cancel.")] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the history.")] = "cancelled from the CLI",
    workflow: Annotated[str | None, typer.Option(help="Bulk: every running run of this workflow.")] = None,
    all_running: Annotated[bool, typer.Option("--all", help="Bulk: every running run.")] = False,
    app_spec: AppOption = None,
) -> None:
    """Cancel one run, or in bulk by filter (--workflow NAME / --all).

    In bulk, a run whose latest state record is unreadable is not cancelled (its workflow and status are
    unknown): it is reported on stderr, to be checked and cancelled by id. Exit codes: 0 done; 2 usage
    error; 3 unreadable run states were skipped.
    """
    app = _app(app_spec)
    if run_id is None and workflow is None and not all_running:
        raise _fail("name a RUN_ID, or a filter: --workflow NAME or --all")
    report = SkipReport()

    async def go() -> list[str]:
        async with app.client() as client:
            if run_id is not None:
                await client.cancel(run_id, reason)
                return [run_id]
            skipped = report.collector()
            return await client.cancel_many(workflow=workflow, reason=reason, on_unreadable=skipped)

    ids: list[str] = asyncio.run(go())
    console.print(f"asked to cancel {len(ids)} run(s)" + (f": {', '.join(ids[:20])}" if ids else ""))
    report.print_summary()
    raise typer.Exit(report.exit_code())


def signal(
    run_id: str,
    name: str,
    payload: Annotated[str, typer.Option("--payload", "-p", help="Payload as JSON.")] = "null",
    app_spec: AppOption = None,
) -> None:
    """Send event NAME (with a JSON payload) to run RUN_ID."""
    app = _app(app_spec)
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise _fail(f"--payload is not JSON: {exc}") from exc

    async def go() -> None:
        async with app.client() as client:
            await client.signal(run_id, name, value)

    asyncio.run(go())
    console.print(f"sent {name!r} to {run_id}")


schedules_app = typer.Typer(help="List, pause and resume schedules.", no_args_is_help=True)


@schedules_app.command("list")
def schedules_list(as_json: JsonFlag = False, app_spec: AppOption = None) -> None:
    """Every schedule with its next tick.

    Exit codes: 0 all read; 3 unreadable schedule records were skipped (each reported on stderr).
    """
    app = _app(app_spec)
    report = SkipReport()
    rows = audit.schedules(app, on_unreadable=report.collector())
    if as_json:
        schedules = [
            {
                "workflow": s["workflow"],
                "cron": s["cron"],
                "timezone": s["timezone"],
                "missed": s["missed"],
                **_json.times("next_tick", s["next_ms"]),
                "paused": bool(s["paused"]),
            }
            for s in rows
        ]
        _json.emit({"schedules": schedules, "unreadable": _json.unreadable(report.records)})
        report.print_summary()
        raise typer.Exit(report.exit_code())
    table = Table("workflow", "cron", "timezone", "missed", "next tick (UTC)", "paused")
    for s in rows:
        nxt = datetime.fromtimestamp(s["next_ms"] / 1000, tz=UTC).isoformat(timespec="seconds")
        table.add_row(s["workflow"], s["cron"], s["timezone"], s["missed"], nxt, "yes" if s["paused"] else "")
    console.print(table)
    report.print_summary()
    raise typer.Exit(report.exit_code())


def _pause(workflow: str, paused: bool, app_spec: str | None) -> None:
    app = _app(app_spec)

    async def go() -> None:
        async with app.client() as client:
            await client.pause_schedule(workflow, paused)

    asyncio.run(go())
    console.print(f"schedule of {workflow} {'paused' if paused else 'resumed'}")


@schedules_app.command("pause")
def schedules_pause(workflow: str, app_spec: AppOption = None) -> None:
    """Pause WORKFLOW's schedule."""
    _pause(workflow, True, app_spec)


@schedules_app.command("resume")
def schedules_resume(workflow: str, app_spec: AppOption = None) -> None:
    """Resume WORKFLOW's schedule."""
    _pause(workflow, False, app_spec)


def _status(status: str) -> str:
    colors = {
        "completed": "green",
        "failed": "red",
        "parked": "yellow",
        "running": "cyan",
        "cancelled": "magenta",
    }
    color = colors.get(status, "white")
    return f"[{color}]{status}[/{color}]"


def register(app: typer.Typer) -> None:
    app.command()(processor)
    app.command()(worker)
    app.command()(start)
    app.command()(signal)
    app.add_typer(runs_app, name="runs")
    app.add_typer(schedules_app, name="schedules")
