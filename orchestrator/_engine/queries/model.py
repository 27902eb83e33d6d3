"""What a run query asks and what it gets back: shared by the processors that answer and the CLI/UI that ask.

Why a module of its own: the HTTP server in each processor, the fan-out client and the web UI must agree
on these shapes (and their JSON form) without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs: every field that is set must match (tags: every pair must match)."""

    workflow: str | None = None
    status: str | None = None
    error_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    since_ms: int | None = None
    """Created at or after (epoch ms)."""
    until_ms: int | None = None
    """Created before (epoch ms)."""
    run_id_prefix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunFilter:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One row of a run list: what an index entry knows, without decoding history."""

    run_id: str
    workflow: str
    status: str
    created_ms: int
    updated_ms: int
    ended_ms: int | None = None
    error_type: str = ""
    error_message: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    partition: int = -1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class RunPage:
    """Newest first. ``next_cursor`` is opaque; None when there is nothing older. ``missing_partitions``
    names partitions no live processor answered for (the page is then incomplete, and says so)."""

    runs: list[RunSummary]
    next_cursor: str | None = None
    missing_partitions: list[int] = field(default_factory=list)


class RunQuery(Protocol):
    """What the CLI and the UI need from whoever answers run queries."""

    def list(self, flt: RunFilter, cursor: str | None = None, limit: int = 50) -> RunPage: ...

    def count(self, flt: RunFilter) -> int: ...
