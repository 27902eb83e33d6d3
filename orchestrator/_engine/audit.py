"""Reading the history topic back: one run's events, exports, replay against the live state, code checks.

The history topic is the system of record. Everything here only reads Kafka (``read_committed``) and never
writes to the engine's topics, so it is safe to run against production. A record that cannot be read, or
an event that does not fold into its run, is handed to an ``on_unreadable`` callback (`unreadable`) and
the read goes on: an audit answers for everything readable and names exactly what it could not read.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
from confluent_kafka import Message

from orchestrator import topology
from orchestrator._engine import fold, wire
from orchestrator._engine.events import Event, decode_event, event_record, to_record
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.state import RunState, decode_state, encode_state
from orchestrator._engine.store import RUN_PREFIX, PartitionStore, run_key
from orchestrator._engine.unreadable import (
    NOT_A_SCHEDULE,
    NOT_FOLDING,
    OnUnreadable,
    Skipped,
    Unreadable,
    Where,
    decoded,
    skip_or_raise,
)
from orchestrator.app import App


# -- reading ----------------------------------------------------------------------------------------------
def history_records(
    app: App,
    *,
    run_id: str | None = None,
    since_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_unreadable: OnUnreadable | None = None,
) -> Iterator[tuple[Where, Event]]:
    """History events with where each was read, in topic order (per partition), of one run or all, from
    ``since_ms`` or the start.

    For one run only its partition is read, from the Kafka time index entry of the run's start (taken from
    the run's state), so finding a run's events does not scan the topic. A record that does not decode
    goes to ``on_unreadable`` and the read goes on (without a callback: `SchemaError`).
    """
    topic = topology.history_topic(app.name)
    partitions = list(range(app.settings.partitions))
    if run_id is not None:
        partitions = [partition_for(run_id, app.settings.partitions)]
        state = live_state(app, run_id, on_unreadable=on_unreadable)
        if state is not None:
            since_ms = state.created_ms if since_ms is None else max(since_ms, state.created_ms)
    msgs = read_partitions(app.settings, topic, partitions, since_ms=since_ms)
    if run_id is not None:
        key = run_id.encode()
        msgs = (m for m in msgs if m.key() == key)
    for count, (where, event) in enumerate(decoded(msgs, decode_event, wire.EVENT, on_unreadable), 1):
        if progress is not None and count % 1000 == 0:
            progress(count)
        yield where, event


def history_events(
    app: App,
    *,
    run_id: str | None = None,
    since_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_unreadable: OnUnreadable | None = None,
) -> Iterator[Event]:
    """`history_records` without the coordinates."""
    for _, event in history_records(
        app, run_id=run_id, since_ms=since_ms, progress=progress, on_unreadable=on_unreadable
    ):
        yield event


def live_state(app: App, run_id: str, *, on_unreadable: OnUnreadable | None = None) -> RunState | None:
    """The state the processors last committed for one run (its changelog partition, compacted).

    None when there is none, or when that record is unreadable (then reported to ``on_unreadable``).
    """
    key = run_key(run_id)
    last: Message | None = None
    topic = topology.changelog_topic(app.name)
    for msg in read_partitions(app.settings, topic, [partition_for(run_id, app.settings.partitions)]):
        if msg.key() == key:
            last = msg
    if last is None or last.value() is None:
        return None
    return next((state for _, state in decoded([last], decode_state, wire.RUN_STATE, on_unreadable)), None)


def live_states(app: App, *, on_unreadable: OnUnreadable | None = None) -> dict[str, RunState]:
    """Every run's committed state. Only each run's latest record is decoded: an unreadable one is reported
    to ``on_unreadable`` and its run left out (older records of a run never matter)."""
    latest: dict[bytes, Message] = {}
    topic = topology.changelog_topic(app.name)
    for msg in read_partitions(app.settings, topic, list(range(app.settings.partitions))):
        key = msg.key()
        if key is not None and key.startswith(RUN_PREFIX):
            latest[key] = msg
    current = (m for m in latest.values() if m.value() is not None)
    states = decoded(current, decode_state, wire.RUN_STATE, on_unreadable)
    return {(where.key or b"")[len(RUN_PREFIX) :].decode(errors="replace"): state for where, state in states}


_SCHEDULE_FIELDS = ("workflow", "cron", "timezone", "missed", "next_ms", "paused")


def schedules(app: App, *, on_unreadable: OnUnreadable | None = None) -> list[dict[str, Any]]:
    """Every schedule as the keyed stage holds it (its changelog, compacted), sorted by workflow.

    A schedule record that is not the JSON object the router writes goes to ``on_unreadable`` (without a
    callback: `SchemaError`), and the others are still listed.
    """
    latest: dict[bytes, Message] = {}
    topic = topology.keyed_changelog_topic(app.name)
    for msg in read_partitions(app.settings, topic, list(range(app.settings.partitions))):
        key = msg.key()
        if key is not None and key.startswith(b"c/"):
            latest[key] = msg
    out: list[dict[str, Any]] = []
    for msg in latest.values():
        value = msg.value()
        if not value:
            continue
        try:
            schedule = json.loads(value)
            missing = [f for f in _SCHEDULE_FIELDS if f not in schedule]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            skip_or_raise(
                Unreadable(Where.of(msg), NOT_A_SCHEDULE, f"{type(exc).__name__}: {exc}"), on_unreadable
            )
            continue
        out.append(schedule)
    return sorted(out, key=lambda s: str(s["workflow"]))


def changelog_run_ids(skipped: Skipped) -> dict[str, Unreadable]:
    """Run id -> its unreadable latest state, among the changelog records ``skipped`` holds."""
    out: dict[str, Unreadable] = {}
    for bad in skipped.records:
        key = bad.where.key_text
        if key is not None and key.startswith(RUN_PREFIX.decode()):
            out.setdefault(key[len(RUN_PREFIX) :], bad)
    return out


# -- replay -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    run_id: str
    field: str
    replayed: Any
    live: Any


class Rebuilt(dict[str, RunState]):
    """The runs a fold over history rebuilt (run id -> state), and the runs it could not.

    A dict of the rebuilt states, so callers that only want those use it as one.
    """

    def __init__(self, states: dict[str, RunState], unverifiable: dict[str, str], began_before: set[str]):
        super().__init__(states)
        self.unverifiable = unverifiable
        """Run id -> why its state cannot be rebuilt from history (unreadable record, gap, bad fold)."""
        self.began_before = began_before
        """With a time window: runs whose history began before it (nothing to check them against)."""


def rebuild(
    records: Iterable[Event | tuple[Where, Event]],
    until_ms: int | None = None,
    store_dir: Path | None = None,
    *,
    skipped: Skipped | None = None,
    window: bool = False,
) -> Rebuilt:
    """Fold history records (from `history_records`; bare events from `history_events` do too, but then a
    report cannot say where an event was) into a fresh store (a temporary RocksDB), emitting nothing.

    A run's events must be seq 0, 1, 2, ... and fold one after the other. Where one does not (a history not
    beginning with RunStarted, a missing seq, an event the fold rejects), that event is reported to
    ``skipped`` as not folding, and the run is not verifiable: its later events are not folded, since any
    state built past a hole would be a guess. A run with a record in ``skipped`` (an unreadable record
    read on the way, keyed by the run's id) is not verifiable either. ``window``: the records start at a
    point in time, so a run whose first event is not seq 0 began earlier and is left out, not reported.
    """
    skipped = skipped if skipped is not None else Skipped()
    states: dict[str, RunState] = {}
    broken: dict[str, str] = {}
    began_before: set[str] = set()
    topics: set[str] = set()
    for item in records:
        where, event = item if isinstance(item, tuple) else (_unknown_where(item), item)
        topics.add(where.topic)
        run_id = event.run_id
        if run_id in broken or run_id in began_before:
            continue
        if until_ms is not None and event.timestamp_ms > until_ms:
            continue
        state = states.get(run_id)
        expected = 0 if state is None else state.next_seq
        if window and state is None and event.seq != 0:
            began_before.add(run_id)
            continue
        if event.seq != expected:
            earlier = skipped.first(run_id, where.topic)
            if earlier is not None:  # the hole is an unreadable record, reported already
                broken[run_id] = f"unreadable record {earlier}"
                states.pop(run_id, None)
                continue
            why = f"{event.kind} at seq {event.seq}: " + _seq_problem(expected, event.seq)
        else:
            try:
                states[run_id] = fold.apply(state, event)
                continue
            except Exception as exc:  # noqa: BLE001 - FoldError or a fold bug: either way the run is unverifiable
                why = f"{event.kind} at seq {event.seq}: {exc}"
        skipped(Unreadable(where, NOT_FOLDING, why))
        broken[run_id] = f"{where}: {why}"
        states.pop(run_id, None)
    for topic in topics:  # the topics the events came from: other topics' keys are not run ids
        for run_id in skipped.keys(topic) & set(states):
            broken[run_id] = f"unreadable record {skipped.first(run_id, topic)}"
            del states[run_id]
    _store(states, store_dir)
    return Rebuilt(states, broken, began_before)


def _seq_problem(expected: int, got: int) -> str:
    if got < expected:
        return f"the run's history is already at seq {expected} (a duplicate, or out of order)"
    missing = f"seq {expected}" if got == expected + 1 else f"seq {expected}..{got - 1}"
    return f"{missing} of the run is missing from the history"


def rebuild_history(
    app: App,
    skipped: Skipped,
    *,
    run_id: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> Rebuilt:
    """`rebuild` over `history_records`, wired so that a record skipped while reading makes its run not
    verifiable (the two calls apart must share one ``skipped``; this cannot get that wrong)."""
    records = history_records(app, run_id=run_id, since_ms=since_ms, on_unreadable=skipped)
    return rebuild(records, until_ms, skipped=skipped, window=since_ms is not None)


def _unknown_where(event: Event) -> Where:
    return Where("(unknown topic)", -1, -1, event.run_id.encode())


def _store(states: dict[str, RunState], store_dir: Path | None) -> None:
    """Write the rebuilt states to a fresh RocksDB store, as a processor's restore would."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-replay-") as tmp:
        store = PartitionStore(store_dir or Path(tmp), 0)
        try:
            for run_id, state in states.items():
                store.put(run_key(run_id), encode_state(state))
            store.commit(None, None)
        finally:
            store.close()


def compare(replayed: Mapping[str, RunState], live: Mapping[str, RunState]) -> list[Difference]:
    diffs: list[Difference] = []
    for run_id in sorted(set(replayed) | set(live)):
        a, b = replayed.get(run_id), live.get(run_id)
        if a is None or b is None:
            diffs.append(
                Difference(run_id, "(run)", "present" if a else "missing", "present" if b else "missing")
            )
            continue
        for f in fields(RunState):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if va != vb:
                diffs.append(Difference(run_id, f.name, va, vb))
    return diffs


@dataclass(frozen=True)
class ReplayReport:
    """Replay's verdict: differences between replayed and live runs, and runs that could not be checked."""

    differences: list[Difference]
    unverifiable: dict[str, str]
    compared: int


def judge(rebuilt: Rebuilt, live: dict[str, RunState], live_unreadable: dict[str, str]) -> ReplayReport:
    """Compare the rebuilt runs with the live ones, leaving out runs either side cannot vouch for.

    ``live_unreadable``: run id -> why its live state could not be read. Such a run, and a run whose
    history could not be rebuilt, is reported as not verifiable instead of as a difference.
    """
    unverifiable = {**live_unreadable, **rebuilt.unverifiable}
    replayed = {k: v for k, v in rebuilt.items() if k not in unverifiable}
    current = {k: v for k, v in live.items() if k not in unverifiable and k not in rebuilt.began_before}
    return ReplayReport(compare(replayed, current), unverifiable, len(set(replayed) | set(current)))


@dataclass(frozen=True)
class Divergence:
    run_id: str
    workflow: str
    message: str


def check_code(app: App, states: dict[str, RunState]) -> list[Divergence]:
    """Re-execute ``app``'s current workflow code against recorded runs; list those that would diverge."""
    from orchestrator._engine.decider import Decider
    from orchestrator._engine.instance_cache import InstanceCache
    from orchestrator.errors import NonDeterminismError

    decider = Decider(app, InstanceCache(1))
    out: list[Divergence] = []
    for run_id, state in sorted(states.items()):
        definition = app.workflows.get(state.workflow)
        if definition is None:
            out.append(
                Divergence(run_id, state.workflow, f"workflow {state.workflow!r} is not in the new code")
            )
            continue
        try:
            inst = decider._replay(state, definition)
        except NonDeterminismError as exc:
            out.append(Divergence(run_id, state.workflow, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - the new code raising on old input is a divergence too
            out.append(Divergence(run_id, state.workflow, f"re-execution raised {type(exc).__name__}: {exc}"))
            continue
        inst.close()
    return out


# -- export -----------------------------------------------------------------------------------------------
def event_json(event: Event) -> dict[str, Any]:
    """One event as plain JSON: payloads shown as JSON when they are, base64 otherwise."""
    body = {k: _plain(v) for k, v in to_record(event.body).items()}
    return {
        "event_id": event.event_id,
        "run_id": event.run_id,
        "workflow": event.workflow,
        "workflow_version": event.workflow_version,
        "seq": event.seq,
        "timestamp_ms": event.timestamp_ms,
        "type": event.kind,
        "body": body,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return {"json": json.loads(value)} if value else {"json": None}
        except (ValueError, UnicodeDecodeError):
            return {"base64": base64.b64encode(value).decode()}
    return value


def export_jsonl(events: Iterator[Event], out: BinaryIO) -> int:
    n = 0
    for event in events:
        out.write(json.dumps(event_json(event), separators=(",", ":")).encode() + b"\n")
        n += 1
    return n


def export_avro(events: Iterator[Event], out: BinaryIO) -> int:
    """An Avro object container file with the Event schema embedded: readable with fastavro alone."""
    reg = wire.registry()
    schema = reg.by_id[reg.current[wire.EVENT]]
    count = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal count
        for event in events:
            count += 1
            yield event_record(event)

    fastavro.writer(out, schema, records(), codec="deflate")
    return count
