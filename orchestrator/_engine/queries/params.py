"""A run query as URL query parameters: what the fan-out client sends and a processor's server parses.

``tag`` repeats, one ``key=value`` per pair (split at the first ``=``: tag keys cannot contain one).
Times are epoch milliseconds. Unknown parameters are refused, so a typo is not silently a wider query.
"""

from __future__ import annotations

from urllib.parse import urlencode

from orchestrator._engine.queries.model import RunFilter

MAX_LIMIT = 1000
_KNOWN = {
    "workflow",
    "status",
    "error_type",
    "tag",
    "since_ms",
    "until_ms",
    "run_id_prefix",
    "cursor",
    "limit",
    "partitions",
}


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"a tag filter is key=value, got {text!r}")
    return key, value


def to_query(
    flt: RunFilter, cursor: str | None = None, limit: int | None = None, partitions: list[int] | None = None
) -> str:
    pairs: list[tuple[str, str]] = []
    for name in ("workflow", "status", "error_type", "since_ms", "until_ms", "run_id_prefix"):
        value = getattr(flt, name)
        if value is not None:
            pairs.append((name, str(value)))
    pairs += [("tag", f"{k}={v}") for k, v in sorted(flt.tags.items())]
    if cursor:
        pairs.append(("cursor", cursor))
    if limit is not None:
        pairs.append(("limit", str(limit)))
    if partitions is not None:
        pairs.append(("partitions", ",".join(map(str, partitions))))
    return urlencode(pairs)


def from_query(params: dict[str, list[str]]) -> tuple[RunFilter, str | None, int, list[int] | None]:
    """(filter, cursor, limit, partitions) from parsed query parameters; ValueError saying what is wrong."""
    unknown = set(params) - _KNOWN
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")

    def one(name: str) -> str | None:
        values = params.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise ValueError(f"parameter {name} given more than once")
        return values[0] or None

    def millis(name: str) -> int | None:
        value = one(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name} is epoch milliseconds, got {value!r}") from None

    tags = dict(parse_tag(t) for t in params.get("tag", []))
    flt = RunFilter(
        workflow=one("workflow"),
        status=one("status"),
        error_type=one("error_type"),
        tags=tags,
        since_ms=millis("since_ms"),
        until_ms=millis("until_ms"),
        run_id_prefix=one("run_id_prefix"),
    )
    limit = millis("limit")
    if limit is None:
        limit = 50
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit is 1..{MAX_LIMIT}, got {limit}")
    raw_partitions = one("partitions")
    partitions = None
    if raw_partitions is not None:
        try:
            partitions = [int(p) for p in raw_partitions.split(",")]
        except ValueError:
            raise ValueError(
                f"partitions is a comma-separated list of numbers, got {raw_partitions!r}"
            ) from None
    return flt, one("cursor"), limit, partitions
