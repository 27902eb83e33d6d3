"""How the suite is spread over pytest-xdist workers: whole files (or groups of files), longest first.

``./dev test`` runs ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` (ADR 0026). Each file is a unit
of work that one worker runs from start to end, so a module's fixtures (a module-scoped broker, a mypy run)
are set up once, as they were before the suite ran in parallel; the files that share an expensive session
fixture form one unit (``tests/scheduling.py``, ``pytest_xdist_make_scheduler`` below).

xdist hands the units out in collection order (``--no-loadscope-reorder``: otherwise it sorts them by their
number of tests), so the items are sorted here, longest unit first (longest-processing-time-first: with two
workers the last unit to start is a short one, and both finish at about the same time). A unit's length is
the sum of its files' seconds in ``tests/durations.json``, measured on a full run; a file not listed there (a
new one) counts ``NEW_FILE_S``, or ``NEW_SLOW_FILE_S`` if a test in it is marked ``slow``. Inside a unit the
files keep the order ``tests/scheduling.py`` gives them. Refresh the seconds after adding slow tests:
``ORCHESTRATOR_TEST_DURATIONS=tests/durations.json ./dev test``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from scheduling import GROUPS, unit_of

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    known = _known_seconds()
    slow_files = {_file_of(item) for item in items if item.get_closest_marker("slow")}
    unit_seconds: dict[str, float] = defaultdict(float)
    seen: set[str] = set()
    for item in items:
        path = _file_of(item)
        if path not in seen:
            seen.add(path)
            guess = NEW_SLOW_FILE_S if path in slow_files else NEW_FILE_S
            unit_seconds[unit_of(path)] += known.get(path, guess)
    in_group = {path: index for paths in GROUPS.values() for index, path in enumerate(paths)}
    position = {id(item): index for index, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[float, str, int, int]:
        path = _file_of(item)
        unit = unit_of(path)
        return (-unit_seconds[unit], unit, in_group.get(path, 0), position[id(item)])

    items.sort(key=key)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown to a pytest without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the groups of ``tests/scheduling.py`` as units of their own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileOrGroup(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(super()._split_scope(nodeid))

    return LoadFileOrGroup(config, log)


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
    merged = {path: seconds for path, seconds in merged.items() if (_ROOT / path).exists()}
    Path(target).write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
