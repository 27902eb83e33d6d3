"""The whole engine on a secured cluster (SASL_SSL, SCRAM-SHA-512, ACLs on), configured by settings alone.

The secured broker shared with the other files of its group (``shared_brokers.secured_broker``: ``kafka start
--secure``, generated CA, SCRAM users, client.properties, in a temp dir on free ports). The engine is told
nothing but ``ORCHESTRATOR_KAFKA_CONFIG_FILE`` (the bootstrap servers come from that file too): the processor,
the worker, the client and the CLI must all get the SASL and TLS settings from it, since the broker serves
nothing else. A client with a wrong password must fail with an error that says so, not hang.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apps.secure_app import make_app
from engine_support import REPO, engine

from orchestrator import App, Settings
from orchestrator._devkafka import BrokerInfo
from orchestrator._devkafka.security import read_client_properties
from orchestrator._engine.access import KafkaAccessError
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.worker import Worker

pytestmark = pytest.mark.timeout(600)  # a JVM start and a few CLI processes on a shared 2-core machine
APP_SPEC = "tests.integration.apps.secure_app:app"
WRONG = "not-the-password-5f2a"


@pytest.fixture
def properties(secured_broker: BrokerInfo, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The broker's client.properties as the only Kafka setting in the environment."""
    assert secured_broker.client_properties is not None
    for name in list(os.environ):
        if name.upper().startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(secured_broker.client_properties))
    return secured_broker.client_properties


def _password(path: Path) -> str:
    return read_client_properties(path)["sasl.password"]


def _cli(*args: str, app_name: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator ARGS`` as an operator runs it: a new process, settings from its environment."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=REPO, env={**os.environ, "SECURE_APP_NAME": app_name, "COLUMNS": "200", **env},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


async def test_processor_worker_client_and_cli_run_on_a_secured_cluster(
    secured_broker: BrokerInfo,
    properties: Path,
    unique_name: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(unique_name)
    assert app.settings.bootstrap_servers == secured_broker.bootstrap  # from the properties file alone
    assert app.settings.kafka["security.protocol"] == "SASL_SSL"

    with engine(app, tmp_path):
        async with app.client() as client:
            handles = [await client.start("compute", x, run_id=f"run-{x}") for x in range(3)]
            assert [await handle.result(timeout=120) for handle in handles] == [1, 3, 5]

    history = _cli("history", "run-2", "--app", APP_SPEC, app_name=unique_name)
    assert history.returncode == 0, history.stderr
    assert "RunCompleted" in history.stdout and "StepCompleted" in history.stdout
    replay = _cli("replay", "--app", APP_SPEC, app_name=unique_name)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "replayed 3 run(s)" in " ".join(replay.stdout.split())
    listed = _cli("runs", "list", "--from-changelog", "--app", APP_SPEC, app_name=unique_name)
    assert listed.returncode == 0, listed.stderr
    assert "run-0" in listed.stdout
    plan = _cli("topics", "plan", "--app", unique_name, app_name=unique_name)
    assert plan.returncode == 0, plan.stderr
    assert "match their declaration" in " ".join(plan.stdout.split())

    password = _password(properties)
    captured = capfd.readouterr()
    shown = [captured.out, captured.err, caplog.text]
    shown += [text for done in (history, replay, listed, plan) for text in (done.stdout, done.stderr)]
    for text in shown:
        assert password not in text


def _raises_within(seconds: float, target: Callable[[], Any]) -> BaseException:
    """What ``target`` raised, run in a thread: a hang fails the test instead of stalling it."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it should have failed"
    assert raised, "returned instead of failing"
    return raised[0]


async def test_a_wrong_password_is_a_clear_error_everywhere(
    properties: Path, unique_name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    app = App(unique_name, settings=Settings(kafka={"sasl.password": WRONG}))  # over the file's password
    assert app.settings.kafka["sasl.username"] == "orchestrator"

    async with app.client() as client:
        with pytest.raises(KafkaAccessError, match="invalid credentials") as raised:
            await asyncio.wait_for(client.start("compute", 1), 120)
    assert "sasl.password" in str(raised.value)  # names the setting to fix

    processor = Processor(app, ProcessorConfig(instance_id="p0", state_dir=tmp_path))
    failed = await asyncio.to_thread(
        _raises_within, 180, lambda: processor.run(install_signal_handlers=False)
    )
    assert isinstance(failed, KafkaAccessError), failed
    failed = await asyncio.to_thread(_raises_within, 180, lambda: asyncio.run(Worker(app).run()))
    assert isinstance(failed, KafkaAccessError), failed

    history = _cli(
        "history", "r1", "--app", APP_SPEC, app_name=unique_name, ORCHESTRATOR_KAFKA__SASL_PASSWORD=WRONG
    )
    assert history.returncode == 2, history.stdout + history.stderr
    said = " ".join(history.stderr.split())
    assert "refused this client" in said and "invalid credentials" in said and "Traceback" not in said

    everything = capfd.readouterr()
    for secret in (WRONG, _password(properties)):
        assert secret not in everything.out + everything.err + str(raised.value) + history.stderr
