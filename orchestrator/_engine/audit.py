"""Reading the history topic back: one run's events, exports, replay against the live state, code checks.

The history topic is the system of record. Everything here only reads Kafka (``read_committed``) and never
writes to the engine's topics, so it is safe to run against production.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from orchestrator import topology
from orchestrator._engine import wire
from orchestrator._engine.events import Event, decode_event, event_record, to_record
from orchestrator._engine.fold import apply
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.state import RunState, decode_state, encode_state
from orchestrator._engine.store import RUN_PREFIX, PartitionStore, run_key
from orchestrator.app import App


# -- reading ----------------------------------------------------------------------------------------------
def history_events(
    app: App,
    *,
    run_id: str | None = None,
    since_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Event]:
    """History events in topic order (per partition), of one run or all, from ``since_ms`` or the start.

    For one run only its partition is read, from the Kafka time index entry of the run's start (taken from
    the run's state), so finding a run's events does not scan the topic.
    """
    topic = topology.history_topic(app.name)
    partitions = list(range(app.settings.partitions))
    if run_id is not None:
        partitions = [partition_for(run_id, app.settings.partitions)]
        state = live_state(app, run_id)
        if state is not None:
            since_ms = state.created_ms if since_ms is None else max(since_ms, state.created_ms)
    count = 0
    for msg in read_partitions(app.settings.bootstrap_servers, topic, partitions, since_ms=since_ms):
        if run_id is not None and msg.key() != run_id.encode():
            continue
        event = decode_event(msg.value())
        count += 1
        if progress is not None and count % 1000 == 0:
            progress(count)
        yield event


def live_state(app: App, run_id: str) -> RunState | None:
    """The state the processors last committed for one run (its changelog partition, compacted)."""
    key = run_key(run_id)
    last: bytes | None = None
    topic = topology.changelog_topic(app.name)
    for msg in read_partitions(
        app.settings.bootstrap_servers, topic, [partition_for(run_id, app.settings.partitions)]
    ):
        if msg.key() == key:
            last = msg.value()
    return decode_state(last) if last is not None else None


def live_states(app: App) -> dict[str, RunState]:
    latest: dict[bytes, bytes | None] = {}
    topic = topology.changelog_topic(app.name)
    for msg in read_partitions(app.settings.bootstrap_servers, topic, list(range(app.settings.partitions))):
        key = msg.key()
        if key is not None and key.startswith(RUN_PREFIX):
            latest[key] = msg.value()
    return {k[len(RUN_PREFIX) :].decode(): decode_state(v) for k, v in latest.items() if v is not None}


# -- replay -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    run_id: str
    field: str
    replayed: Any
    live: Any


def rebuild(
    events: Iterator[Event], until_ms: int | None = None, store_dir: Path | None = None
) -> dict[str, RunState]:
    """Fold history events into a fresh store (a temporary RocksDB), emitting nothing."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-replay-") as tmp:
        store = PartitionStore(store_dir or Path(tmp), 0)
        states: dict[str, RunState] = {}
        try:
            for event in events:
                if until_ms is not None and event.timestamp_ms > until_ms:
                    continue
                states[event.run_id] = apply(states.get(event.run_id), event)
            for run_id, state in states.items():
                store.put(run_key(run_id), encode_state(state))
            store.commit(None, None)
        finally:
            store.close()
    return states


def compare(replayed: dict[str, RunState], live: dict[str, RunState]) -> list[Difference]:
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
