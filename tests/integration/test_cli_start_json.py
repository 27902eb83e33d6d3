"""``orchestrator start --json``: the run id (with ``--wait`` the result) for a script, on the real broker.

The processor and the worker run as real processes (``crash_app``), the CLI as a third.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine_support import APP_SPEC, REPO, child_env


def _cli(env: dict[str, str], *args: str) -> tuple[int, Any, str]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "--app", APP_SPEC, "--json"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def _engine(role: str, env: dict[str, str], tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    with (tmp / f"{role}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", role, APP_SPEC, *args],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_start_prints_the_run_and_with_wait_its_result(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    code, doc, err = _cli(env, "start", "five", "--input", "1", "--run-id", "cli-1")
    assert code == 0, err
    assert doc == {
        "run_id": "cli-1",
        "workflow": "five",
        "status": "started",
        "result": None,
        "unreadable": [],
    }
    engine = [
        _engine("processor", env, tmp_path, "--state-dir", str(tmp_path / "state")),
        _engine("worker", env, tmp_path),
    ]
    try:
        code, doc, err = _cli(
            env, "start", "five", "--input", "2", "--run-id", "cli-2", "--wait", "--timeout", "180"
        )
    finally:
        for proc in engine:
            proc.terminate()
        for proc in engine:
            proc.wait(60)
    assert code == 0, err
    assert doc["run_id"] == "cli-2" and doc["status"] == "completed"
    assert doc["result"] == {"json": 11113}
