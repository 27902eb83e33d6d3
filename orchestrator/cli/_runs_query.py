"""``orchestrator runs list`` over the processors' run indexes: parsing its options, printing a page.

Kept apart from ``cli/engine.py`` so that the command there stays a short function (other changes to the
CLI touch that module too).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from orchestrator._engine.queries.index import UNREADABLE
from orchestrator._engine.queries.model import RunFilter, RunPage
from orchestrator._engine.queries.params import parse_tag
from orchestrator._engine.state import RunStatus
from orchestrator.durations import to_millis

EXIT_INCOMPLETE = 5
"""``runs list`` exit code when a partition did not answer (the page may miss runs): apart from 4, which
says Kafka itself failed (docs/cli-json.md)."""


def time_ms(text: str, now_ms: int | None = None) -> int:
    """``1h``/``30m``/``2d`` (that long ago), an ISO-8601 time (UTC when it has no zone), or epoch ms."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return now - to_millis(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration ago (1h, 2d), an ISO time nor epoch ms") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def run_filter(
    workflow: str | None,
    status: str | None,
    error_type: str | None,
    tags: list[str],
    since: str | None,
    until: str | None,
    run_id_prefix: str | None = None,
) -> RunFilter:
    """ValueError (a usage error) for a status no run has: an index has no such key, so the typo would
    list nothing and look like an answer."""
    valid = [*(s.value for s in RunStatus), UNREADABLE]
    if status is not None and status not in valid:
        raise ValueError(f"no run status {status!r}: one of {', '.join(valid)}")
    return RunFilter(
        workflow=workflow,
        status=status,
        error_type=error_type,
        tags=dict(parse_tag(t) for t in tags),
        since_ms=time_ms(since) if since else None,
        until_ms=time_ms(until) if until else None,
        run_id_prefix=run_id_prefix,
    )


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def incomplete_warning(missing: list[int], partitions: int) -> str:
    """What to say about a page some partitions did not answer for (``""`` when all answered); no markup."""
    if missing and len(missing) >= partitions:
        return (
            "no processor answered: none is running with --http-port, or none is reachable; "
            "`runs list --from-changelog` scans the changelog instead (slow)"
        )
    if missing:
        names = ", ".join(map(str, missing))
        return (
            f"incomplete: no processor answered for partition(s) {names} (an instance died or is handing "
            "them over): runs there are not listed"
        )
    return ""


def print_page(
    console: Console, page: RunPage, as_json: bool, partitions: int, err: Console | None = None
) -> int:
    """Print ``page``; the exit code (``EXIT_INCOMPLETE`` when partitions are missing).

    Under ``--json`` stdout is the JSON document only: the warning about missing partitions is in it
    (``warning``) and on ``err`` (stderr), never after the document where it would break a JSON reader."""
    missing = page.missing_partitions
    warning = incomplete_warning(missing, partitions)
    if as_json:
        body = {
            "runs": [r.to_json() for r in page.runs],
            "next_cursor": page.next_cursor,
            "missing_partitions": missing,
            "warning": warning or None,
        }
        console.print_json(json.dumps(body))
        if warning:
            (err or Console(stderr=True)).print(warning, markup=False, highlight=False)
        return EXIT_INCOMPLETE if missing else 0
    table = Table("run id", "workflow", "status", "created (UTC)", "ended (UTC)", "error", "tags")
    for r in page.runs:
        tags = " ".join(f"{k}={v}" for k, v in sorted(r.tags.items()))
        error = f"{r.error_type}: {r.error_message}"[:80] if r.error_type else ""
        table.add_row(r.run_id, r.workflow, r.status, _when(r.created_ms), _when(r.ended_ms), error, tags)
    console.print(table)
    console.print(f"{len(page.runs)} run(s), newest first")
    if page.next_cursor:
        console.print(f"next page: --cursor {page.next_cursor}")
    if warning:
        head, _, rest = warning.partition(":")
        color = "red" if len(missing) >= partitions else "yellow"
        console.print(f"[{color}]{head}:[/{color}]{rest}", highlight=False)
    return EXIT_INCOMPLETE if missing else 0
