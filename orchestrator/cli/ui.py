"""CLI: ``orchestrator ui --app MODULE:app --port 8080``, the web UI."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.engine import AppOption, _app, _fail


def ui(
    app_spec: AppOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (anything but 127.0.0.1 needs a token).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 8080,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the UI's Prometheus metrics on this port (/metrics).")
    ] = None,
    runs_from_changelog: Annotated[
        bool,
        typer.Option(
            help="List runs by reading the changelog topic instead of asking the processors (their "
            "--http-port): slow with many runs, for when no processor serves queries."
        ),
    ] = False,
) -> None:
    """Serve the web UI: runs (filter, search, live), a run's timeline and history, cancel/signal/resume/
    re-run (one or in bulk), dead letters, schedules, task queues.

    Tokens: ORCHESTRATOR_UI__TOKEN may act, ORCHESTRATOR_UI__READ_TOKEN may only look. With neither, the UI
    listens on 127.0.0.1 only. Exit codes: 2 settings that do not allow the address (or a missing extra).
    """
    try:
        import uvicorn

        from orchestrator._engine.queries.fanout import FanOutRunQuery
        from orchestrator._engine.queries.model import RunQuery
        from orchestrator.ui import UISettings, create_app
        from orchestrator.ui.auth import UIConfigError, check_bind
        from orchestrator.ui.changelog_runs import ChangelogRunQuery
        from orchestrator.ui.metrics import UIMetrics
    except ModuleNotFoundError as exc:
        raise _fail(f"the web UI needs the ui extra: pip install 'kafka-orchestrator[ui]' ({exc})") from exc
    app = _app(app_spec)
    settings = UISettings()
    try:
        check_bind(host, settings)
    except UIConfigError as exc:
        raise _fail(str(exc)) from exc
    # The processors answer from their indexes (ADR 0016); the changelog scan only when asked for.
    runs: RunQuery = ChangelogRunQuery(app) if runs_from_changelog else FanOutRunQuery(app.settings, app)
    metrics = UIMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port, host)
    web = create_app(app, runs, settings, metrics=metrics)
    try:
        uvicorn.run(web, host=host, port=port, log_level="info", access_log=False)
    finally:
        if isinstance(runs, FanOutRunQuery):
            runs.close()


def register(app: typer.Typer) -> None:
    app.command()(ui)
