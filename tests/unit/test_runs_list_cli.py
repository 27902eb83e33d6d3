"""``orchestrator runs list`` as main() runs it, over a stubbed fan-out (no processor, no broker): what goes
to stdout and stderr, and the exit codes (docs/cli-json.md)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from orchestrator import App
from orchestrator._engine import audit
from orchestrator._engine import state as st
from orchestrator._engine.queries import fanout
from orchestrator._engine.queries.model import RunFilter, RunPage, RunSummary
from orchestrator.cli import main
from orchestrator.cli._runs_query import EXIT_INCOMPLETE
from orchestrator.settings import Settings

app = App("runs-list-cli", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=4))
SPEC = f"{__name__}:app"


def _run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["orchestrator", "runs", "list", "--app", SPEC, *args])
    with pytest.raises(SystemExit) as ended:
        main()
    code = ended.value.code
    return code if isinstance(code, int) else 1


def _page(monkeypatch: pytest.MonkeyPatch, page: RunPage | Exception) -> list[RunFilter]:
    asked: list[RunFilter] = []

    def list_(self: Any, flt: RunFilter, cursor: str | None = None, limit: int = 50) -> RunPage:
        asked.append(flt)
        if isinstance(page, Exception):
            raise page
        return page

    monkeypatch.setattr(fanout.FanOutRunQuery, "list", list_)
    return asked


def test_json_of_an_incomplete_page_is_one_document_and_the_warning_goes_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _page(monkeypatch, RunPage([RunSummary("r-1", "wf", "running", 1, 2, partition=0)], None, [2, 3]))
    assert _run(monkeypatch, "--json") == EXIT_INCOMPLETE == 5
    out, err = capsys.readouterr()
    body = json.loads(out)  # nothing after the document
    assert body["missing_partitions"] == [2, 3] and [r["run_id"] for r in body["runs"]] == ["r-1"]
    assert "partition(s) 2, 3" in body["warning"] and "partition(s) 2, 3" in err


def test_a_complete_page_exits_0_with_no_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _page(monkeypatch, RunPage([], None, []))
    assert _run(monkeypatch, "--json") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warning"] is None and err == ""


def test_a_kafka_failure_reaches_the_root_handler(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _page(monkeypatch, KafkaException(KafkaError(KafkaError._TIMED_OUT, "describing group timed out")))
    assert _run(monkeypatch, "--json") == 4
    out, err = capsys.readouterr()
    body = json.loads(out)
    assert body["error_type"] == "kafka_unreachable" and "timed out" in body["error"]
    assert "error" in err


def test_an_unknown_status_is_a_usage_error_naming_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = _page(monkeypatch, RunPage([], None, []))
    assert _run(monkeypatch, "--status", "complete") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'complete'" in err and "completed" in err and "unreadable" in err
    assert asked == []  # refused before anything was asked
    assert _run(monkeypatch, "--status", "unreadable") == 0  # what an undecodable state is listed as


def test_from_changelog_refuses_a_cursor_and_honours_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, "--from-changelog", "--cursor", "abc") == 2
    assert "--cursor" in capsys.readouterr().err
    states = {
        f"r-{i}": st.RunState(f"r-{i}", "wf", st.COMPLETED if i % 2 else st.RUNNING, b"null", i, i + 1)
        for i in range(5)
    }
    monkeypatch.setattr(audit, "live_states", lambda app, on_unreadable: states)
    assert _run(monkeypatch, "--from-changelog", "--json", "--status", "completed") == 0
    body = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in body["runs"]] == ["r-3", "r-1"]
    assert body["missing_partitions"] == [] and body["unreadable"] == [] and body["next_cursor"] is None
