"""From a runs page's query string to a `RunFilter`, and back: pure, so every form field is unit tested.

Fields: ``workflow``, ``status``, ``error_type``, ``q`` (a run id or its beginning), ``range`` (the last
``15m``/``1h``/``24h``/``7d``...), or ``since``/``until`` (ISO times, as ``<input type=datetime-local>``
sends them; without a zone they are UTC), and ``tags`` (``k=v`` pairs, comma separated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from orchestrator._core.state import RunStatus
from orchestrator._engine.queries.model import RunFilter

FIELDS = ("workflow", "status", "error_type", "q", "range", "since", "until", "tags")
_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


class FilterError(ValueError):
    """A filter field the UI cannot read; the message names the field and what it expects."""


@dataclass(frozen=True)
class ParsedFilter:
    """The filter, and the form values it came from (to fill the form in again and build links)."""

    filter: RunFilter
    values: dict[str, str]

    def query(self, **extra: str) -> str:
        """The query string of this filter (plus ``extra``): for pagination and polling links."""
        return urlencode({**{k: v for k, v in self.values.items() if v}, **extra})


def parse_duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``7d`` -> milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise FilterError(f"range: {text!r} is not a duration such as 15m, 1h, 24h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_time_ms(field: str, text: str) -> int:
    """An ISO time (``2026-11-29T10:00``, with or without seconds and zone; no zone means UTC) -> epoch ms."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"{field}: {text!r} is not a time such as 2026-11-29T10:00 (UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_tags(text: str) -> dict[str, str]:
    """``team=payments, region=eu`` -> a dict; every pair needs a non-empty key and an ``=``."""
    tags: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise FilterError(f"tags: {part.strip()!r} is not key=value")
        tags[key.strip()] = value.strip()
    return tags


def parse_filter(params: Mapping[str, str], now_ms: int) -> ParsedFilter:
    """The filter a query string asks for. ``range`` wins over ``since`` (both set the lower bound)."""
    values = {k: params.get(k, "").strip() for k in FIELDS}
    status = values["status"] or None
    if status is not None and status not in RunStatus.__members__.values():
        allowed = ", ".join(s.value for s in RunStatus)
        raise FilterError(f"status: {status!r} is not one of {allowed}")
    since_ms = parse_time_ms("since", values["since"]) if values["since"] else None
    if values["range"]:
        since_ms = now_ms - parse_duration_ms(values["range"])
    until_ms = parse_time_ms("until", values["until"]) if values["until"] else None
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise FilterError("until: must be later than since")
    flt = RunFilter(
        workflow=values["workflow"] or None,
        status=status,
        error_type=values["error_type"] or None,
        tags=parse_tags(values["tags"]),
        since_ms=since_ms,
        until_ms=until_ms,
        run_id_prefix=values["q"] or None,
    )
    return ParsedFilter(flt, values)


def matches(
    flt: RunFilter,
    *,
    workflow: str,
    status: str,
    error_type: str,
    created_ms: int,
    run_id: str,
    tags: Mapping[str, str],
) -> bool:
    """Whether one run passes the filter (the rule every RunQuery answers by; see `RunFilter`)."""
    return (
        (flt.workflow is None or flt.workflow == workflow)
        and (flt.status is None or flt.status == status)
        and (flt.error_type is None or flt.error_type == error_type)
        and (flt.since_ms is None or created_ms >= flt.since_ms)
        and (flt.until_ms is None or created_ms < flt.until_ms)
        and (flt.run_id_prefix is None or run_id.startswith(flt.run_id_prefix))
        and all(tags.get(k) == v for k, v in flt.tags.items())
    )
