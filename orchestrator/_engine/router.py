"""The keyed stage: routes domain events to the runs waiting for them, and ticks schedules.

Its input is the engine's keyed topic, partitioned by routing key (event name + correlation key, or a
schedule's workflow), so every wait and every event for one key meet in one partition, whichever processor
owns the runs. It keeps, per partition, in its own store (changelogged like the run stores):

  ``s/<routing key>\\0<run id>\\0<position>``   a run waiting (value: look-back ms, wait start ms)
  ``e/<routing key>\\0<arrival ms BE><event id>`` a recent event kept for look-backs (value: the event)
  ``c/<workflow>``                               a schedule (JSON)
  ``t/...``                                      expiry of kept events, schedule ticks

Everything it decides becomes inbox requests (``Signal``, ``StartRun``), written in the same transaction.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from orchestrator._core import formats
from orchestrator._core.effects import Effects
from orchestrator._engine import events as ev
from orchestrator._engine.admission import AdmissionStage
from orchestrator._engine.decider import routing_key
from orchestrator._engine.events import Event, decode_event, encode_event
from orchestrator._engine.store import PartitionStore, timer_key
from orchestrator.app import App
from orchestrator.durations import to_millis
from orchestrator.triggers import Schedule

_MS = struct.Struct(">Q")
_SUB = struct.Struct(">QQ")
ON_TIME_MS = 5_000
"""A tick fired within this long after its time counts as on time; older ones are "missed"."""
MAX_CATCH_UP = 1000


def _sub_prefix(rk: str) -> bytes:
    return b"s/" + rk.encode() + b"\x00"


def _event_prefix(rk: str) -> bytes:
    return b"e/" + rk.encode() + b"\x00"


class Router:
    def __init__(self, app: App) -> None:
        self.app = app
        self.admission = AdmissionStage(app)

    # -- inputs -------------------------------------------------------------------------------------------
    def handle(self, store: PartitionStore, event: Event, now_ms: int) -> Effects:
        body = event.body
        if isinstance(body, ev.DomainEvent):
            return self._on_domain_event(store, event, body, now_ms)
        if isinstance(body, ev.Subscribe):
            return self._on_subscribe(store, event, body, now_ms)
        if isinstance(body, ev.Unsubscribe):
            rk = routing_key(body.event_name, body.key)
            store.delete(_sub_prefix(rk) + f"{body.run_id}\x00{body.position}".encode())
            return Effects()
        if isinstance(body, ev.ScheduleRegister):
            return self._on_schedule_register(store, body, now_ms)
        if isinstance(body, ev.SchedulePause):
            return self._on_schedule_pause(store, body)
        if isinstance(body, ev.AdmitRequest):
            return self.admission.on_request(store, event, body, now_ms)
        if isinstance(body, ev.Release):
            return self.admission.on_release(store, body, now_ms)
        return Effects(
            dead_letter=f"{event.kind} does not belong on the keyed topic (it takes domain events, waits, "
            "schedules and admission requests); the producer of this record writes to the wrong topic"
        )

    def _on_domain_event(
        self, store: PartitionStore, event: Event, body: ev.DomainEvent, now_ms: int
    ) -> Effects:
        rk = routing_key(body.event_name, body.key)
        fx = Effects()
        for sub_key, _ in store.scan_merged(_sub_prefix(rk)):
            run_id, _, position = sub_key[len(_sub_prefix(rk)) :].decode().rpartition("\x00")
            fx.inbox.append(self._signal(run_id, body, now_ms, position))
            store.delete(sub_key)
        source = self.app.event_sources.get(body.event_name)
        retention = to_millis(source.retention) if source else 0
        if retention:
            key = _event_prefix(rk) + _MS.pack(now_ms) + event.event_id.encode()
            store.put(key, encode_event(event))
            store.put(timer_key(now_ms + retention, key.hex(), "expire"), b"")
        return fx

    def _on_subscribe(self, store: PartitionStore, event: Event, body: ev.Subscribe, now_ms: int) -> Effects:
        rk = routing_key(body.event_name, body.key)
        since = event.timestamp_ms - body.lookback_ms if body.lookback_ms else None
        if since is not None:
            recent = [
                decode_event(value)
                for key, value in store.scan_merged(_event_prefix(rk))
                if _MS.unpack_from(key, len(_event_prefix(rk)))[0] >= since
            ]
            if recent:  # the latest event within the look-back answers the wait at once
                latest = recent[-1].body
                assert isinstance(latest, ev.DomainEvent)
                return Effects(inbox=[self._signal(body.run_id, latest, now_ms, str(body.position))])
        sub_key = _sub_prefix(rk) + f"{body.run_id}\x00{body.position}".encode()
        store.put(sub_key, _SUB.pack(body.lookback_ms, event.timestamp_ms))
        return Effects()

    # -- schedules ------------------------------------------------------------------------------------------
    def _on_schedule_register(self, store: PartitionStore, body: ev.ScheduleRegister, now_ms: int) -> Effects:
        try:  # checked before anything changes: a bad registration must not stop the current schedule
            Schedule(body.workflow, body.cron, body.timezone, body.missed)
            next_ms = _next_tick(body.cron, body.timezone, now_ms)
        except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
            return Effects(
                dead_letter=f"schedule of {body.workflow!r} refused, the current one is kept: {exc}"
            )
        key = b"c/" + body.workflow.encode()
        raw = store.get(key)
        current = json.loads(raw) if raw else None
        wanted = {"cron": body.cron, "timezone": body.timezone, "missed": body.missed}
        if current is not None and all(current.get(k) == v for k, v in wanted.items()):
            return Effects(ignored="schedule unchanged")
        if current is not None:
            store.delete(timer_key(current["next_ms"], body.workflow, "tick"))
        state = {
            **wanted,
            "workflow": body.workflow,
            "next_ms": next_ms,
            "paused": bool(current and current["paused"]),
        }
        store.put(key, json.dumps(state).encode())
        store.put(timer_key(next_ms, body.workflow, "tick"), b"")
        return Effects()

    def _on_schedule_pause(self, store: PartitionStore, body: ev.SchedulePause) -> Effects:
        key = b"c/" + body.workflow.encode()
        raw = store.get(key)
        if raw is None:
            return Effects(ignored=f"no schedule for {body.workflow!r}")
        state = json.loads(raw)
        state["paused"] = body.paused
        store.put(key, json.dumps(state).encode())
        return Effects()

    def fire_timer(self, store: PartitionStore, ident: str, tag: str, now_ms: int) -> Effects:
        if tag == "expire":
            store.delete(bytes.fromhex(ident))
            return Effects()
        if tag == "tick":
            return self._on_tick(store, ident, now_ms)
        if tag in ("debounce", "pump", "idem-expire"):
            return self.admission.on_timer(store, ident, tag, now_ms)
        return Effects(ignored=f"unknown keyed timer {tag!r}")

    def _on_tick(self, store: PartitionStore, workflow: str, now_ms: int) -> Effects:
        key = b"c/" + workflow.encode()
        raw = store.get(key)
        if raw is None:
            return Effects(ignored="tick of a removed schedule")
        state = json.loads(raw)
        ticks: list[int] = []
        tick = state["next_ms"]
        while tick <= now_ms and len(ticks) < MAX_CATCH_UP:
            ticks.append(tick)
            tick = _next_tick(state["cron"], state["timezone"], tick)
        state["next_ms"] = tick
        store.put(key, json.dumps(state).encode())
        store.put(timer_key(tick, workflow, "tick"), b"")
        if state["paused"] or not ticks:
            return Effects()
        on_time = [t for t in ticks if now_ms - t < ON_TIME_MS]
        if state["missed"] == "run_all":
            chosen = ticks
        elif state["missed"] == "run_once":
            chosen = ticks[-1:]
        else:
            chosen = on_time[-1:]
        return Effects(inbox=[self._start(workflow, t, now_ms) for t in chosen])

    # -- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _signal(run_id: str, body: ev.DomainEvent, now_ms: int, position: str) -> Event:
        signal = ev.Signal(body.event_name, body.key, body.payload, body.source)
        return Event(formats.routed_signal_id(run_id, position, body.source), run_id, "", now_ms, signal)

    def _start(self, workflow: str, tick_ms: int, now_ms: int) -> Event:
        when = datetime.fromtimestamp(tick_ms / 1000, tz=UTC).isoformat()
        run_id = f"{workflow}@{when}"
        payload = self.app.data.encode(when)
        start = ev.StartRun(payload, "schedule")
        return Event(formats.schedule_start_id(run_id), run_id, workflow, now_ms, start)


def _next_tick(cron: str, timezone: str, after_ms: int) -> int:
    base = datetime.fromtimestamp(after_ms / 1000, tz=ZoneInfo(timezone))
    nxt: datetime = croniter(cron, base).get_next(datetime)
    return int(nxt.timestamp() * 1000)


def schedule_states(store: PartitionStore) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value in store.scan_merged(b"c/")]
