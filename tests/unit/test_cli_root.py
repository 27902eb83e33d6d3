"""The root callback's pieces: where the log settings come from, and the ``--json`` memory of a command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import _json, _root
from orchestrator.cli import app as cli


def test_log_settings_come_from_settings_and_fall_back_when_they_do_not_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_LOG_LEVEL", "warning")
    monkeypatch.setenv("ORCHESTRATOR_LOG_FORMAT", "json")
    assert _root._from_dotenv() == ("warning", "json")
    monkeypatch.setenv("ORCHESTRATOR_PARTITIONS", "many")  # settings that do not load: kafka start still runs
    assert _root._from_dotenv() == ("INFO", "text")


def test_a_json_option_is_remembered_for_main_and_forgotten_by_the_next_command(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["kafka", "status", "--dir", str(tmp_path), "--json"])
    assert _json.requested()
    runner.invoke(cli, ["kafka", "status", "--dir", str(tmp_path)])
    assert not _json.requested()


def test_root_log_options_are_kept_for_processor_and_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_LOG_LEVEL", raising=False)
    monkeypatch.delenv("ORCHESTRATOR_LOG_FORMAT", raising=False)
    runner = CliRunner()
    runner.invoke(
        cli, ["--log-level", "debug", "--log-format", "json", "kafka", "status", "--dir", "/nonexistent"]
    )
    assert _root.explicit() == ("debug", "json")
    runner.invoke(cli, ["kafka", "status", "--dir", "/nonexistent"])
    assert _root.explicit() == (None, None)
