"""On the real broker: a failing step's traceback, with the user's function name and line, goes from the
worker (async step, plain step on the thread pool) or the processor (local step) through the inbox to
the run's history, for retryable and terminal failures alike, and ``runs show`` prints the last one
(``--json``: ``last_failure``)."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from engine_support import engine, history, settings
from typer.testing import CliRunner

from orchestrator import App, RetryPolicy, TerminalError, WorkflowContext, step_info
from orchestrator._engine.events import StepFailed
from orchestrator.cli import app as cli
from orchestrator.errors import RunFailedError

LINES: dict[str, int] = {}
"""Where each step raised, as its frame said: what the recorded traceback must name."""


def _here(name: str) -> None:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    LINES[name] = frame.f_back.f_lineno + 1  # the caller's next line: its raise


def _app(name: str, bootstrap: str) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step(retry=RetryPolicy(max_attempts=2, initial_interval="100ms"))
    async def charge_the_card(i: int) -> int:
        if step_info().attempt == 1:
            _here("retryable")
            raise ConnectionError(f"card network down for {i}")
        _here("terminal")
        raise TerminalError(f"card {i} declined")

    @app.step(retry=RetryPolicy(max_attempts=1))
    def read_the_ledger(i: int) -> int:  # a plain def: run on the worker's thread pool
        _here("plain")
        return {"rows": 0}["missing"] + i

    @app.step(local=True)
    async def check_locally(i: int) -> int:
        _here("local")
        raise TerminalError(f"local check {i} failed")

    @app.workflow
    async def pay(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(charge_the_card, i)

    @app.workflow
    async def ledger(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(read_the_ledger, i)

    @app.workflow
    async def local(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(check_locally, i)

    return app


async def _fail_each(app: App, state_dir: Path) -> None:
    with engine(app, state_dir):
        async with app.client() as client:
            for workflow, run_id in (("pay", "pay-1"), ("ledger", "ledger-1"), ("local", "local-1")):
                with pytest.raises(RunFailedError):
                    await (await client.start(workflow, 7, run_id=run_id)).result(timeout=90)


def _frame_line(function: str, line: int) -> str:
    return f'File "{__file__}", line {line}, in {function}'


def test_a_failing_steps_traceback_reaches_history_and_runs_show(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(unique_name, kafka_bootstrap)
    asyncio.run(_fail_each(app, tmp_path))

    runs = history(app)
    failed = {run_id: [e.body for e in runs[run_id] if isinstance(e.body, StepFailed)] for run_id in runs}
    retryable, terminal = failed["pay-1"]
    assert retryable.retryable and not terminal.retryable
    assert _frame_line("charge_the_card", LINES["retryable"]) in retryable.traceback
    assert retryable.traceback.endswith("ConnectionError: card network down for 7\n")
    assert _frame_line("charge_the_card", LINES["terminal"]) in terminal.traceback
    assert terminal.traceback.endswith("TerminalError: card 7 declined\n")
    assert _frame_line("charge_the_card", LINES["retryable"]) not in terminal.traceback  # each its own
    (plain,) = failed["ledger-1"]
    assert plain.retryable and plain.error_type == "KeyError"  # retryable, though its policy allows one
    assert _frame_line("read_the_ledger", LINES["plain"]) in plain.traceback
    (local,) = failed["local-1"]
    assert local.worker.startswith("processor:")  # run in the processor, not by a worker
    assert _frame_line("check_locally", LINES["local"]) in local.traceback

    module = types.ModuleType(f"step_traceback_{unique_name}")
    module.app = app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def show(*extra: str) -> Any:
        result = CliRunner().invoke(cli, ["runs", "show", "pay-1", "--app", f"{module.__name__}:app", *extra])
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    doc = json.loads(show("--json"))
    last = doc["last_failure"]
    assert (last["position"], last["step"], last["attempt"]) == (0, "charge_the_card", 2)
    assert (last["error_type"], last["retryable"]) == ("TerminalError", False)
    assert last["traceback"] == terminal.traceback
    text = show()
    assert "last failure, #0 charge_the_card attempt 2: TerminalError: card 7 declined" in text
    assert f"line {LINES['terminal']}, in charge_the_card" in text
