"""Records a reading tool could not use: where they are, why, and how a read carries on past them.

The audit tools (history, export, replay, runs, dlq) read topics record by record. One record they cannot
decode (junk bytes, a schema id from a newer engine, a cut-off Avro body, a record of the wrong type) or an
event that does not fold into its run must not end the whole read in a traceback: the operator needs the
rest of the topic, plus an exact list of what was skipped so they can look at those offsets themselves.
So a tolerant read hands every such record to an ``on_unreadable`` callback as an `Unreadable` and goes on;
without a callback it raises `SchemaError` naming the record, for programs that want all or nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Message

from orchestrator._engine import wire
from orchestrator._engine.events import BODY_TYPES
from orchestrator.errors import SchemaError

T = TypeVar("T")

# Why a record was skipped: a short, stable category (for scripts and counts) and a detail (for people).
JUNK = "junk bytes"
UNKNOWN_SCHEMA = "unknown schema id"
WRONG_TYPE = "wrong record type"
TRUNCATED = "truncated Avro"
BAD_AVRO = "Avro does not match its schema"
UNKNOWN_EVENT = "unknown event type"
NOT_FOLDING = "does not fold into its run"
NOT_A_SCHEDULE = "not a schedule"

_HEADER = struct.Struct(">bI")


@dataclass(frozen=True, slots=True)
class Where:
    """The coordinates of one record, enough to fetch it again with any Kafka tool."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None

    @classmethod
    def of(cls, msg: Message) -> Where:
        return cls(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key())

    @property
    def key_text(self) -> str | None:
        """The key as text (run ids are UTF-8), or None when absent or not text."""
        if self.key is None:
            return None
        try:
            return self.key.decode()
        except UnicodeDecodeError:
            return None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record that was reported and skipped."""

    where: Where
    reason: str
    detail: str

    def __str__(self) -> str:
        key = self.where.key_text
        about = f" (key {key!r})" if key is not None else ""
        return f"{self.where}{about}: {self.reason}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        """The record for ``--json`` outputs; ``type`` tells it apart from events on the same stream."""
        key = self.where.key
        return {
            "type": "unreadable",
            "topic": self.where.topic,
            "partition": self.where.partition,
            "offset": self.where.offset,
            "key": self.where.key_text if key is None or self.where.key_text is not None else key.hex(),
            "reason": self.reason,
            "detail": self.detail,
        }


OnUnreadable = Callable[[Unreadable], None]


def classify(data: bytes | None, expected: str, exc: BaseException) -> tuple[str, str]:
    """(reason, detail) for ``data`` that failed to decode as a record of schema ``expected`` with ``exc``.

    Looks at the wire-format header and decodes the Avro again itself rather than parsing the error's
    text, so the categories do not depend on how the decoder words its messages. Only failed records pay.
    """
    if data is None or len(data) < _HEADER.size:
        size = 0 if data is None else len(data)
        return JUNK, f"{size} byte(s): too short for the wire-format header (magic byte + schema id)"
    magic, sid = _HEADER.unpack_from(data)
    if magic != 0:
        return JUNK, f"first byte {data[0]:#04x} is not the wire-format magic byte 0 ({data[:8].hex()}...)"
    reg = wire.registry()
    if sid not in reg.by_id:
        return UNKNOWN_SCHEMA, (
            f"schema id {sid} is not in this engine's registry: written by a newer engine version, "
            "or not one of ours"
        )
    name = reg.names[sid]
    if name != expected:
        return WRONG_TYPE, f"a record of type {name} (schema id {sid}) where {expected} belongs"
    try:
        _, record = wire.decode(data, expected)
    except Exception as wire_exc:  # noqa: BLE001 - explaining a failure must not fail itself
        cause = wire_exc.__cause__ if wire_exc.__cause__ is not None else wire_exc
        if isinstance(cause, EOFError):
            return TRUNCATED, (
                f"{name} record (schema id {sid}, {len(data)} bytes) ends before its last field "
                "(cut off, or a length inside it is corrupt)"
            )
        return BAD_AVRO, f"{name} record (schema id {sid}): {type(cause).__name__}: {cause}"
    # The Avro was fine: turning the record into our type failed.
    body = record.get("body") if name == wire.EVENT else None
    if isinstance(body, tuple) and body and body[0] not in BODY_TYPES:
        return UNKNOWN_EVENT, f"event type {body[0]!r} is unknown to this engine version: upgrade this reader"
    return BAD_AVRO, f"{name} record (schema id {sid}) does not convert: {type(exc).__name__}: {exc}"


def unreadable(msg: Message, expected: str, exc: BaseException) -> Unreadable:
    """The report for record ``msg`` that failed to decode as ``expected`` with ``exc``."""
    reason, detail = classify(msg.value(), expected, exc)
    return Unreadable(Where.of(msg), reason, detail)


def skip_or_raise(bad: Unreadable, on_unreadable: OnUnreadable | None) -> None:
    """Hand ``bad`` to the callback, or raise it as a `SchemaError` when the caller wants all or nothing."""
    if on_unreadable is None:
        raise SchemaError(f"unreadable record {bad}")
    on_unreadable(bad)


def decoded(
    msgs: Iterable[Message],
    decode: Callable[[bytes | None], T],
    expected: str,
    on_unreadable: OnUnreadable | None,
) -> Iterator[tuple[Where, T]]:
    """(where, value) for every record of ``msgs`` that ``decode`` reads; the others go to ``on_unreadable``.

    Any exception from ``decode`` counts as unreadable (a decoder can fail in ways its author did not
    foresee); the record's coordinates and the category say where to look.
    """
    for msg in msgs:
        try:
            value = decode(msg.value())
        except Exception as exc:  # noqa: BLE001 - every way a record can fail to decode is reported, not fatal
            skip_or_raise(unreadable(msg, expected, exc), on_unreadable)
            continue
        yield Where.of(msg), value


class Skipped:
    """Collects the unreadable records of a read, in the order they were met; usable as ``on_unreadable``.

    ``echo`` sees each record as it is skipped, so a long read can report them while it goes on.
    """

    def __init__(self, echo: OnUnreadable | None = None) -> None:
        self.records: list[Unreadable] = []
        self._echo = echo

    def __call__(self, bad: Unreadable) -> None:
        self.records.append(bad)
        if self._echo is not None:
            self._echo(bad)

    def __len__(self) -> int:
        return len(self.records)

    def keys(self, topic: str | None = None) -> set[str]:
        """The (text) keys of the records skipped (in ``topic``): on the history topic, run ids."""
        chosen = (u for u in self.records if topic is None or u.where.topic == topic)
        return {k for k in (u.where.key_text for u in chosen) if k is not None}

    def first(self, key: str, topic: str | None = None) -> Unreadable | None:
        """The first record skipped with ``key`` (in ``topic``)."""
        chosen = (u for u in self.records if topic is None or u.where.topic == topic)
        return next((u for u in chosen if u.where.key_text == key), None)
