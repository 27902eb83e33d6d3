"""How the suite is spread over pytest-xdist workers: whole files (or named groups of files), longest first.

``./dev test`` runs ``pytest -n 2 --dist loadgroup --no-loadscope-reorder`` (ADR 0026). xdist's ``loadgroup``
sends every test with the same ``xdist_group`` mark to one worker, and every other test on its own; here
every test without a mark is given its file as its group, so a module's fixtures (a module-scoped broker,
a mypy run) are set up once, on one worker, as they were before the suite ran in parallel. A few files that
share an expensive session fixture name one group (``pytest.mark.xdist_group("secured-broker")``), so the
broker is started once for all of them.

xdist hands out groups in collection order, so the items are sorted here with the longest group first
(longest-processing-time-first: with two workers, the last group to start is a short one and both workers
finish at about the same time). A group's length is the sum of its files' seconds in ``tests/durations.json``,
measured on a full run; a file not listed there (a new one) counts ``NEW_FILE_S``, or ``NEW_SLOW_FILE_S`` if
a test in it is marked ``slow``. Refresh the file after adding slow tests:
``ORCHESTRATOR_TEST_DURATIONS=tests/durations.json ./dev test``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
RECORD_ENV = "ORCHESTRATOR_TEST_DURATIONS"
NEW_FILE_S = 10.0
NEW_SLOW_FILE_S = 60.0
_ROOT = Path(__file__).resolve().parent.parent


def _file_of(item: pytest.Item) -> str:
    return item.path.resolve().relative_to(_ROOT).as_posix()


def _known_seconds() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except FileNotFoundError:
        return {}


def _group_of(item: pytest.Item) -> str:
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return _file_of(item)
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    known = _known_seconds()
    slow_files = {_file_of(item) for item in items if item.get_closest_marker("slow")}
    file_seconds: dict[str, float] = {}
    group_seconds: dict[str, float] = defaultdict(float)
    group_files: dict[str, set[str]] = defaultdict(set)
    for item in items:
        path, group = _file_of(item), _group_of(item)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
        if path not in file_seconds:
            default = NEW_SLOW_FILE_S if path in slow_files else NEW_FILE_S
            file_seconds[path] = known.get(path, default)
        if path not in group_files[group]:
            group_files[group].add(path)
            group_seconds[group] += file_seconds[path]
    position = {id(item): index for index, item in enumerate(items)}
    # Longest group first; inside a group, its shortest file first (the shared-cluster group relies on it:
    # see shared_brokers.py), then the collection order.
    items.sort(
        key=lambda item: (
            -group_seconds[_group_of(item)],
            _group_of(item),
            file_seconds[_file_of(item)],
            position[id(item)],
        )
    )


_measured: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Seconds per file (setup, call and teardown); on the controller too, from the workers' reports."""
    if os.environ.get(RECORD_ENV):
        _measured[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(RECORD_ENV)
    if not target or hasattr(session.config, "workerinput") or not _measured:
        return  # recorded once, by the controller (or the only process without xdist)
    merged = {**_known_seconds(), **{k: round(v, 1) for k, v in _measured.items()}}
    Path(target).write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
