"""A `RunQuery` that reads the changelog: the UI's run list until the processors answer queries.

Stand-in on purpose, and the only module of the UI that knows where runs are listed from. Each call
folds nothing: it reads every run's latest committed state from the compacted changelog
(`audit.live_states`), which is one pass over the topic, so it suits small and medium deployments and
tests. The fan-out query (`orchestrator._engine.queries.fanout.FanOutRunQuery`, asking each processor
over HTTP) answers the same protocol from indexes; swapping it in is the one line in
`orchestrator.cli.ui` that builds the RunQuery.

Run states carry no tags, so the runs it lists have none, and a filter on tags matches nothing here.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable

from orchestrator._engine import audit
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.queries.model import RunFilter, RunPage, RunSummary
from orchestrator._engine.state import TERMINAL, RunState
from orchestrator._engine.unreadable import OnUnreadable, Unreadable
from orchestrator.app import App
from orchestrator.ui.filters import matches

Key = tuple[int, str]
"""Where a run sits in the list: (created_ms, run_id), listed from the largest down."""


def encode_cursor(key: Key) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The key a cursor stands for; ValueError for anything this module did not write."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a run list cursor: {cursor!r}") from exc
    if not isinstance(created, int) or not isinstance(run_id, str):
        raise ValueError(f"not a run list cursor: {cursor!r}")
    return created, run_id


def summary(state: RunState, partitions: int) -> RunSummary:
    return RunSummary(
        run_id=state.run_id,
        workflow=state.workflow,
        status=str(state.status),
        created_ms=state.created_ms,
        updated_ms=state.updated_ms,
        ended_ms=state.updated_ms if state.status in TERMINAL else None,
        error_type=state.error_type,
        error_message=state.error_message,
        partition=partition_for(state.run_id, partitions),
    )


def page_of(runs: list[RunSummary], flt: RunFilter, cursor: str | None, limit: int) -> RunPage:
    """Newest first: the runs matching ``flt`` after ``cursor``, at most ``limit`` (pure; unit tested)."""
    after = decode_cursor(cursor) if cursor else None
    chosen = sorted(
        (
            r
            for r in runs
            if matches(
                flt,
                workflow=r.workflow,
                status=r.status,
                error_type=r.error_type,
                created_ms=r.created_ms,
                run_id=r.run_id,
                tags=r.tags,
            )
            and (after is None or (r.created_ms, r.run_id) < after)
        ),
        key=lambda r: (r.created_ms, r.run_id),
        reverse=True,
    )
    page = chosen[:limit]
    more = len(chosen) > limit
    return RunPage(page, encode_cursor((page[-1].created_ms, page[-1].run_id)) if more and page else None)


class ChangelogRunQuery:
    """`RunQuery` over the changelog. One scan serves the calls of the next ``ttl`` seconds (a page
    asks for a list and a count; polling browsers ask every few seconds)."""

    def __init__(
        self,
        app: App,
        *,
        ttl: float = 1.0,
        on_unreadable: OnUnreadable | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.ttl = ttl
        self.skipped: list[Unreadable] = []
        self._on_unreadable = on_unreadable or self.skipped.append
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[RunSummary]] | None = None

    def _runs(self) -> list[RunSummary]:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
            states = audit.live_states(self.app, on_unreadable=self._on_unreadable)
            runs = [summary(s, self.app.settings.partitions) for s in states.values()]
            # Aged from when the scan ended: a scan takes over a second, so a page's list and count
            # would otherwise each scan (measured: 2.5 s instead of 1.2 s for the runs page).
            self._cached = (self._clock(), runs)
            return runs

    def list(self, flt: RunFilter, cursor: str | None = None, limit: int = 50) -> RunPage:
        return page_of(self._runs(), flt, cursor, limit)

    def count(self, flt: RunFilter) -> int:
        return len(page_of(self._runs(), flt, None, 1 << 62).runs)

    def forget(self) -> None:
        """Drop the cached scan (after an action, so the next page shows its effect)."""
        with self._lock:
            self._cached = None
