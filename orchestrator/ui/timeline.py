"""A run's Gantt chart, laid out from its state: one row per command, one bar per phase of it.

Pure (a `RunState` and "now" in, positions out) so the layout is unit tested and the template only
draws. Every phase comes from what the state records, nothing is guessed:

- a step (or compensation): *queued* from when it was scheduled to its first attempt's start, each
  attempt (*attempt*, or *failed* with its error), the *backoff* between a failed attempt and the next
  one (or until ``due_ms`` while it waits), and a running attempt up to now;
- a timer: *sleep* from ``ctx.sleep`` to when it fired (or its due time, while it waits);
- a wait: *wait* from ``wait_for_event`` to what resolved it (event, timeout) or to now;
- a child: *child* from its start to its end, linked to the child run; detached ones are a point;
- a marker (``ctx.patched``): a point.

A phase still going is *open* and ends at the horizon: now for a live run, its last update for an ended one.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator._core.state import (
    STEP_BACKOFF,
    STEP_SCHEDULED,
    STEP_WAITING,
    TERMINAL,
    ChildRecord,
    CommandRecord,
    MarkerRecord,
    RunState,
    StepRecord,
    TimerRecord,
    WaitRecord,
)

MIN_WIDTH_PCT = 0.4
"""A phase shorter than this share of the chart is drawn this wide, so that it can be seen and hovered."""


@dataclass(frozen=True)
class Segment:
    start_ms: int
    end_ms: int
    kind: str
    """queued | attempt | failed | running | backoff | sleep | wait | child | point"""
    label: str
    open: bool = False


@dataclass(frozen=True)
class Row:
    position: int
    kind: str
    name: str
    status: str
    segments: tuple[Segment, ...]
    child_run_id: str = ""
    undoes: int = -1


@dataclass(frozen=True)
class Tick:
    pct: float
    label: str


@dataclass(frozen=True)
class Timeline:
    start_ms: int
    end_ms: int
    rows: tuple[Row, ...]

    @property
    def span_ms(self) -> int:
        return max(1, self.end_ms - self.start_ms)

    def left(self, seg: Segment) -> float:
        """Where ``seg`` starts, in percent of the chart's width (kept inside the chart)."""
        pct = (seg.start_ms - self.start_ms) * 100.0 / self.span_ms
        return round(min(max(pct, 0.0), 100.0 - MIN_WIDTH_PCT), 3)

    def width(self, seg: Segment) -> float:
        pct = (seg.end_ms - seg.start_ms) * 100.0 / self.span_ms
        return round(min(max(pct, MIN_WIDTH_PCT), 100.0 - self.left(seg)), 3)

    def ticks(self, count: int = 5) -> list[Tick]:
        return [
            Tick(round(i * 100.0 / count, 3), "+" + duration_text(i * self.span_ms // count))
            for i in range(count + 1)
        ]


def duration_text(ms: int) -> str:
    """``850ms``, ``2.5s``, ``3m 20s``, ``2h 5m``, ``3d 4h``: short enough for a tick or a tooltip."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def layout(state: RunState, now_ms: int) -> Timeline:
    """The chart of ``state`` as of ``now_ms`` (for an ended run, its end is the horizon)."""
    horizon = state.updated_ms if state.status in TERMINAL else max(now_ms, state.updated_ms)
    resolved = {r.position: r.timestamp_ms for r in state.resolutions}
    rows = tuple(_row(record, resolved, horizon) for record in state.steps)
    end = max([horizon, state.created_ms + 1, *(s.end_ms for r in rows for s in r.segments)])
    return Timeline(state.created_ms, end, rows)


def _row(record: CommandRecord, resolved: dict[int, int], horizon: int) -> Row:
    if isinstance(record, StepRecord):
        return Row(
            record.position,
            str(record.kind),
            record.step,
            str(record.status),
            tuple(_step_segments(record, horizon)),
            undoes=record.undoes,
        )
    if isinstance(record, TimerRecord):
        return Row(
            record.position, "timer", "sleep", str(record.status), (_timer(record, resolved, horizon),)
        )
    if isinstance(record, WaitRecord):
        return Row(
            record.position,
            "wait",
            record.event_name,
            str(record.status),
            (_wait(record, resolved, horizon),),
        )
    if isinstance(record, ChildRecord):
        return Row(
            record.position,
            "child",
            record.workflow,
            str(record.status),
            (_child(record, resolved, horizon),),
            child_run_id=record.child_run_id,
        )
    assert isinstance(record, MarkerRecord)
    point = Segment(record.scheduled_ms, record.scheduled_ms, "point", f"patched {record.name!r}")
    return Row(record.position, "marker", record.name, str(record.status), (point,))


def _step_segments(step: StepRecord, horizon: int) -> list[Segment]:
    out: list[Segment] = []
    previous = step.scheduled_ms
    failed_before = False
    for a in step.attempts:
        if a.started_ms > previous:
            kind = "backoff" if failed_before else "queued"
            out.append(Segment(previous, a.started_ms, kind, f"{kind} before attempt {a.attempt}"))
        end = a.finished_ms or horizon
        if a.error_type:
            label = f"attempt {a.attempt} failed: {a.error_type}: {a.message}"
            out.append(Segment(a.started_ms, end, "failed", label))
        else:
            out.append(Segment(a.started_ms, end, "attempt", f"attempt {a.attempt}"))
        previous = max(previous, end)
        failed_before = bool(a.error_type)
    if step.status == STEP_BACKOFF:
        due = max(step.due_ms, previous)
        out.append(Segment(previous, due, "backoff", f"backoff: attempt {step.attempt} due", open=True))
    elif step.status == STEP_SCHEDULED:
        started = step.started_ms if step.started_ms >= previous else 0
        if started:  # the current attempt started and has not reported yet
            if started > previous:
                kind = "backoff" if failed_before else "queued"
                out.append(Segment(previous, started, kind, f"{kind} before attempt {step.attempt}"))
            out.append(Segment(started, horizon, "running", f"attempt {step.attempt} running", open=True))
        else:
            kind = "backoff" if failed_before else "queued"
            out.append(Segment(previous, horizon, kind, f"attempt {step.attempt} waiting", open=True))
    return out


def _timer(t: TimerRecord, resolved: dict[int, int], horizon: int) -> Segment:
    fired = resolved.get(t.position)
    if fired is not None:
        return Segment(t.scheduled_ms, fired, "sleep", "slept")
    if t.status == STEP_WAITING:
        return Segment(t.scheduled_ms, max(t.due_ms, horizon), "sleep", "sleeping until due", open=True)
    return Segment(t.scheduled_ms, horizon, "sleep", f"sleep {t.status}")


def _wait(w: WaitRecord, resolved: dict[int, int], horizon: int) -> Segment:
    what = f"wait for {w.event_name!r}" + (f" key {w.key!r}" if w.key else "")
    done = resolved.get(w.position)
    if done is not None:
        return Segment(w.scheduled_ms, done, "wait", f"{what}: {w.status}")
    return Segment(w.scheduled_ms, horizon, "wait", f"{what}: {w.status}", open=w.status == STEP_WAITING)


def _child(c: ChildRecord, resolved: dict[int, int], horizon: int) -> Segment:
    what = f"child {c.workflow} {c.child_run_id}"
    if c.detached:
        return Segment(c.scheduled_ms, c.scheduled_ms, "point", f"{what} (detached)")
    if c.ended is not None:
        return Segment(c.scheduled_ms, c.ended.finished_ms, "child", f"{what}: {c.status}")
    done = resolved.get(c.position)
    if done is not None:
        return Segment(c.scheduled_ms, done, "child", f"{what}: {c.status}")
    return Segment(c.scheduled_ms, horizon, "child", f"{what}: {c.status}", open=True)
