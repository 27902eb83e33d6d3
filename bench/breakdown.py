"""Where the time of one run goes, from its own history: hops between processor and worker, per step.

The history topic holds every event of every run with timestamps taken by the component that made it:
the processor stamps the events it emits (``StepScheduled``, ``RunCompleted``...), the worker stamps when it
started and finished a step (``StepCompleted.started_ms`` / ``finished_ms``). So for step i:

- ``processor -> worker``: StepScheduled(i) -> the worker starts step i (transaction commit, the worker's
  read_committed fetch, its poll loop);
- ``step body``: the worker's started -> finished;
- ``worker -> processor``: finished(i) -> StepScheduled(i+1) or RunCompleted (produce to the inbox, the
  processor's poll, the wait for the transaction in progress, the decider).

Reported as means (they add up along a run) and p90s. Clocks are the same machine's, so the hops
are comparable (millisecond resolution).
"""

from __future__ import annotations

import statistics
from typing import Any


def hops(bootstrap: str, app_name: str, partitions: int, prefix: str) -> dict[str, Any]:
    from orchestrator._engine.events import RunCompleted, StepCompleted, StepScheduled, decode_event
    from orchestrator._engine.reader import read_partitions
    from orchestrator.settings import Settings
    from orchestrator.topology import history_topic

    runs: dict[str, list[Any]] = {}
    settings = Settings(bootstrap_servers=bootstrap)
    for msg in read_partitions(settings, history_topic(app_name), list(range(partitions))):
        key = (msg.key() or b"").decode()
        if key.startswith(prefix):
            runs.setdefault(key, []).append(decode_event(msg.value()))
    to_worker: list[int] = []
    body: list[int] = []
    to_processor: list[int] = []
    first: list[int] = []
    total: list[int] = []
    for events in runs.values():
        scheduled: dict[int, int] = {}
        done_at: dict[int, int] = {}
        t_start = events[0].timestamp_ms
        end = None
        for ev in events:
            b = ev.body
            if isinstance(b, StepScheduled):
                scheduled[b.position] = ev.timestamp_ms
                if b.position - 1 in done_at:
                    to_processor.append(ev.timestamp_ms - done_at[b.position - 1])
                else:
                    first.append(ev.timestamp_ms - t_start)
            elif isinstance(b, StepCompleted):
                if b.position in scheduled:
                    to_worker.append(b.started_ms - scheduled[b.position])
                body.append(b.finished_ms - b.started_ms)
                done_at[b.position] = b.finished_ms
            elif isinstance(b, RunCompleted):
                end = ev.timestamp_ms
                if done_at:
                    to_processor.append(ev.timestamp_ms - done_at[max(done_at)])
        if end is not None:
            total.append(end - t_start)

    def mean(v: list[int]) -> float | None:
        return round(statistics.fmean(v), 1) if v else None

    def p90(v: list[int]) -> float | None:
        return sorted(v)[int(0.9 * (len(v) - 1))] if v else None

    series = {
        "first_event_to_first_step_scheduled_ms": first,
        "processor_to_worker_ms": to_worker,
        "step_body_ms": body,
        "worker_to_processor_ms": to_processor,
        "history_first_to_run_completed_ms": total,
    }
    out: dict[str, Any] = {"runs": len(runs)}
    for k, v in series.items():
        out[k] = mean(v)  # means add up along a run; medians would not
        out[k.replace("_ms", "_p90_ms")] = p90(v)
    return out
