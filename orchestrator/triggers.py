"""Your own topics as inputs: triggers start runs, event sources feed ``wait_for_event``, schedules tick.

Processors consume the declared topics themselves (in the same transactions as everything else), so a
domain event redelivered after a crash starts or wakes runs exactly once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fastavro

from orchestrator.durations import Duration

KeyExpr = str | Callable[[Any], Any]
"""A field path into the event value (``"order.id"``) or a function of the value."""

MISSED_POLICIES = ("skip", "run_once", "run_all")


@dataclass(frozen=True)
class ValueFormat:
    """How the values of a user topic are encoded: ``"json"`` or ``"avro"`` (with the writer schema).

    Avro values may carry the Confluent wire-format header (magic byte and schema id); it is skipped.
    """

    format: str = "json"
    avro_schema: dict[str, Any] | str | None = None

    def __post_init__(self) -> None:
        if self.format not in ("json", "avro"):
            raise ValueError(f"format must be 'json' or 'avro', not {self.format!r}")
        if self.format == "avro" and self.avro_schema is None:
            raise ValueError("format='avro' needs avro_schema (the writer schema, as a dict or JSON text)")

    @cached_property
    def _parsed(self) -> Any:
        schema: Any = json.loads(self.avro_schema) if isinstance(self.avro_schema, str) else self.avro_schema
        return fastavro.parse_schema(schema)

    def decode(self, raw: bytes | None) -> Any:
        """The record's value as Python data; ValueError saying what is wrong with it otherwise.

        The message is read by an operator in the DLQ, so it names the format and shows the first bytes.
        """
        if raw is None:
            raise ValueError(
                "the record has no value (a tombstone); a trigger or event source needs a value to read"
            )
        if self.format == "json":
            try:
                return json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise ValueError(f"the value is not JSON ({exc}); it starts with {raw[:32]!r}") from exc
        body = raw[5:] if len(raw) > 5 and raw[0] == 0 else raw
        try:
            return fastavro.schemaless_reader(io.BytesIO(body), self._parsed, None)
        except Exception as exc:  # fastavro raises anything from EOFError to UnicodeError
            raise ValueError(
                f"the value does not decode with the declared Avro schema ({type(exc).__name__}: {exc}); "
                f"it starts with {raw[:32]!r}"
            ) from exc


class FieldNotFoundError(KeyError):
    """A field path that a value does not have; a KeyError, so code that caught KeyError still does."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message like a key
        return str(self.args[0]) if self.args else ""


_SCALARS = (str, bytes, bytearray, int, float, bool, list, tuple, type(None))
"""Values whose attributes are never fields: ``"upper"`` must not find ``str.upper``."""


def extract(value: Any, expr: KeyExpr) -> Any:
    """The field at path ``expr`` of ``value`` (dict keys, or attributes of objects), or ``expr(value)``.

    Raises `FieldNotFoundError` (a KeyError) naming the path, the part that is missing and what was there
    instead, because the message ends up in the DLQ next to a record someone has to fix.
    """
    if callable(expr):
        return expr(value)
    current = value
    seen: list[str] = []
    for part in expr.split("."):
        if isinstance(current, dict):
            if part in current:
                current = current[part]
                seen.append(part)
                continue
            where = f"field {'.'.join(seen)!r}" if seen else "the value"
            keys = ", ".join(sorted(map(str, current))[:10]) or "none"
            raise FieldNotFoundError(
                f"field {expr!r} not found: {where} has no {part!r} (its fields: {keys})"
            )
        if not isinstance(current, _SCALARS) and hasattr(current, part):
            current = getattr(current, part)
            seen.append(part)
            continue
        where = f"field {'.'.join(seen)!r}" if seen else "the value"
        raise FieldNotFoundError(
            f"field {expr!r} not found: {where} is {_kind(current)}, not an object with a field {part!r}"
        )
    return current


def _kind(value: Any) -> str:
    """``a list``, ``a str``, ``null``: how an error message names what it found instead of an object."""
    if value is None:
        return "null"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


@dataclass(frozen=True)
class Trigger:
    """Start one run of the workflow per matching record of ``topic``.

    Attributes:
        topic: the user's topic.
        run_id: field path or function giving the run id (a business key: the same key twice is one run);
            default ``<topic>-<partition>-<offset>``, so a redelivered record is the same run.
        filter: only records for which it returns true start a run.
        input: turns the event value into the workflow input (default: the value itself). A workflow with
            an `Admission` takes its key and priority from this input, as for a start by the client.

    A record this trigger cannot use (a value that does not decode, a tombstone, a missing field, a key
    that is not a non-empty string, integer or UUID, a priority that is not a number, a function that
    raises, an engine record over the topics' size limit) is dead-lettered with the reason and its topic,
    partition and offset; the processor commits past it and goes on.
    """

    topic: str
    run_id: KeyExpr | None = None
    filter: Callable[[Any], bool] | None = None
    input: Callable[[Any], Any] | None = None
    value_format: ValueFormat = field(default_factory=ValueFormat)


@dataclass(frozen=True)
class EventSource:
    """Records of ``topic`` become events named ``name`` with a correlation key, for ``wait_for_event``.

    Routing goes through the engine's keyed topic, so a run waiting on any partition or processor gets
    them. Events are kept for ``retention`` so that a wait with a ``lookback`` still sees one that came
    before it began. Records it cannot use are dead-lettered, as for a `Trigger`.
    """

    name: str
    topic: str
    key: KeyExpr
    filter: Callable[[Any], bool] | None = None
    retention: Duration = "1d"
    value_format: ValueFormat = field(default_factory=ValueFormat)


@dataclass(frozen=True)
class Schedule:
    """A cron schedule: one run per tick across restarts and instances.

    ``missed`` says what happens to ticks that passed while nothing ran: ``"skip"`` them, ``"run_once"``
    (one run for the latest), or ``"run_all"``.
    """

    workflow: str
    cron: str
    timezone: str = "UTC"
    missed: str = "skip"

    def __post_init__(self) -> None:
        from croniter import croniter

        if not croniter.is_valid(self.cron):
            raise ValueError(f"schedule of {self.workflow!r}: {self.cron!r} is not a cron expression")
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be one of {MISSED_POLICIES}, not {self.missed!r}")
        from zoneinfo import ZoneInfo

        ZoneInfo(self.timezone)  # raises for an unknown zone
