"""``Replayer``: does this workflow code still agree with the runs it has already recorded?

Each run's recorded inputs (its start, step results, signals, timer firings, cancels, resumes) are fed to
the engine's decider at their recorded times, with the code under test, and what the code decides is
compared, event by event, with what the history shows next. Before each input the decider gets the run's
state as the history itself gives it (``fold`` of the events so far) and no live workflow instance, so it
re-executes the workflow from that record exactly as a processor does after deploying new code: version
markers (``ctx.patched``) take the recorded path, and a changed command sequence parks the run with the
engine's own explanation. Checking at every input answers "is this code safe whenever it is deployed?".
The first difference is reported. Nothing runs for real: step results come from the history.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator._core.instance_cache import InstanceCache
from orchestrator._engine import events as ev
from orchestrator._engine import state as st
from orchestrator._engine.decider import Decider, Effects
from orchestrator._engine.events import Event
from orchestrator._engine.fold import apply, fold
from orchestrator._engine.state import RunState
from orchestrator.app import App
from orchestrator.errors import NonDeterminismError
from orchestrator.testing._history_file import by_run, read_events
from orchestrator.testing._stimuli import RESYNC, describe, identity, input_for


@dataclass(frozen=True)
class ReplayDivergence:
    """Where one run's history and the code part ways.

    Attributes:
        run_id, workflow: the run.
        seq: the history event (its ``seq``) where they differ; -1 when the code goes on past the end.
        position: the workflow command position concerned, when there is one.
        history: what the history has there, in words.
        code: what the code did instead, in words.
    """

    run_id: str
    workflow: str
    seq: int
    position: int | None
    history: str
    code: str

    @property
    def message(self) -> str:
        where = f"history event {self.seq}" if self.seq >= 0 else "after the end of the history"
        if self.position is not None:
            where += f", position {self.position}"
        return (
            f"run {self.run_id!r} ({self.workflow}) at {where}: history has {self.history}; code: {self.code}"
        )


@dataclass(frozen=True)
class ReplayResult:
    """What a replay found: ``ok`` when every complete history agrees with the code."""

    runs: int
    divergences: tuple[ReplayDivergence, ...] = ()
    skipped: tuple[tuple[str, str], ...] = field(default=())
    """(run id, why) of histories that could not be replayed (e.g. an export that starts mid-run)."""

    @property
    def ok(self) -> bool:
        return not self.divergences

    def report(self) -> str:
        lines = [f"replayed {self.runs} run(s): {len(self.divergences)} diverge"]
        lines += [f"  {d.message}" for d in self.divergences]
        lines += [f"  skipped {run_id!r}: {why}" for run_id, why in self.skipped]
        return "\n".join(lines)

    def raise_for_divergence(self) -> None:
        """NonDeterminismError listing every divergence, if there is any (for a CI test)."""
        if self.divergences:
            raise NonDeterminismError(self.report())


class Replayer:
    """Replays recorded histories against ``app``'s current workflow code."""

    def __init__(self, app: App) -> None:
        self.app = app

    def replay_file(self, path: str | Path, *, run_ids: Iterable[str] | None = None) -> ReplayResult:
        """Replay every run (or ``run_ids``) of an ``orchestrator export`` file (jsonl or avro)."""
        return self.replay(read_events(path), run_ids=run_ids)

    def replay(
        self,
        history: Iterable[Event] | Mapping[str, Sequence[Event]],
        *,
        run_ids: Iterable[str] | None = None,
    ) -> ReplayResult:
        """Replay events of one or many runs (e.g. ``env.history(run_id)`` of a test environment)."""
        runs = (
            {k: sorted(v, key=lambda e: e.seq) for k, v in history.items()}
            if isinstance(history, Mapping)
            else by_run(history)
        )
        wanted = set(run_ids) if run_ids is not None else None
        divergences: list[ReplayDivergence] = []
        skipped: list[tuple[str, str]] = []
        count = 0
        for run_id, events in runs.items():
            if wanted is not None and run_id not in wanted:
                continue
            if not events or not isinstance(events[0].body, ev.RunStarted):
                first = events[0].kind if events else "nothing"
                skipped.append((run_id, f"its history begins with {first}, not RunStarted"))
                continue
            count += 1
            divergence = self.replay_run(events)
            if divergence is not None:
                divergences.append(divergence)
        return ReplayResult(count, tuple(divergences), tuple(skipped))

    def replay_run(self, events: Sequence[Event]) -> ReplayDivergence | None:
        """The first divergence of one run's complete history (``RunStarted`` first), or None."""
        return _RunReplay(self.app, events).run()


class _RunReplay:
    """One run's replay: the recorded events, the decider, and what it produced but was not yet matched."""

    def __init__(self, app: App, events: Sequence[Event]) -> None:
        self.app = app
        self.events = list(events)
        self.workflow = self.events[0].workflow
        self.cache = InstanceCache(1)
        self.decider = Decider(app, self.cache, rng=random.Random(0))
        self.state: RunState | None = None
        self.pending: deque[Event] = deque()
        self.trusting = False  # taking the rest of a reaction as recorded (a version marker, a policy change)

    def run(self) -> ReplayDivergence | None:
        if self.workflow not in self.app.workflows:
            return self._diverged(self.events[0], "a run of it", f"no workflow named {self.workflow!r}")
        try:
            for i, recorded in enumerate(self.events):
                divergence = self._step(i, recorded)
                if divergence is not None:
                    return divergence
            if self.pending:
                extra = self.pending[0]
                return ReplayDivergence(
                    self.events[0].run_id,
                    self.workflow,
                    -1,
                    _position(extra),
                    "nothing more",
                    describe(extra),
                )
            return self._recheck_open()
        finally:
            self.cache.clear()

    def _recheck_open(self) -> ReplayDivergence | None:
        """Re-execute a run that is still open (running or parked) against its whole record.

        The reaction to the last input may have been taken on trust, and an open run has no later input
        whose re-execution would check it. Resuming a parked run is how an operator makes a processor
        re-execute it; the decider does the same here (a running run is parked first, on a copy). A
        running run must then decide nothing new; a parked one may go on, but must not park again.
        """
        state = fold(self.events)
        if state is None or state.ending or state.status not in (st.RUNNING, st.PARKED):
            return None
        last = self.events[-1]
        was_running = state.status == st.RUNNING
        if was_running:
            park = ev.RunParked("replay", "re-executing the open run")
            state = apply(state, self._synthetic(last, "park", park, last.seq + 1))
        self.cache.clear()
        resume = self._synthetic(last, "resume", ev.ResumeRun("replay"), -1)
        _, fx = self.decider.handle(state, resume, last.timestamp_ms)
        decided = [e for e in fx.history if not isinstance(e.body, ev.RunResumed | ev.TagsSet)]
        parked = [e for e in decided if isinstance(e.body, ev.RunParked)]
        if parked or (was_running and decided):
            first = parked[0] if parked else decided[0]
            recorded = "the run waiting as recorded" if was_running else "a parked run, to be resumed"
            return ReplayDivergence(
                last.run_id, self.workflow, -1, _position(first), recorded, describe(first)
            )
        return None

    @staticmethod
    def _synthetic(last: Event, what: str, body: ev.Body, seq: int) -> Event:
        return Event(f"{last.run_id}/replay-{what}", last.run_id, last.workflow, last.timestamp_ms, body, seq)

    def _step(self, i: int, recorded: Event) -> ReplayDivergence | None:
        if isinstance(recorded.body, ev.TagsSet):
            return None  # tags are metadata, never a divergence (ADR 0016): not compared either way
        if not self.pending:
            stimulus = input_for(recorded)
            if stimulus is None and self.trusting:
                return None
            if stimulus is None:
                return self._diverged(recorded, describe(recorded), "nothing (it did not decide this)")
            self.trusting = False
            if stimulus is RESYNC:
                self._resync(i)
                return None
            if i > 0:  # the state as recorded, and no live instance: the code re-executes from the record
                self.cache.clear()
                self.state = fold(self.events[:i])
            fx = self._feed(stimulus.event, stimulus.tag, recorded.timestamp_ms)
            produced_events = [e for e in fx.history if not isinstance(e.body, ev.TagsSet)]
            if not produced_events:
                why = fx.dead_letter or fx.ignored or "no event"
                return self._diverged(recorded, describe(recorded), f"the engine took it as {why!r}")
            self.pending.extend(produced_events)
        produced = self.pending.popleft()
        if identity(produced) == identity(recorded):
            return None
        if isinstance(recorded.body, ev.RunParked):  # the code of its time parked here; this code does not
            self._resync(i)
            return None
        if isinstance(produced.body, ev.MarkerRecorded) or ev.RetryScheduled in (
            type(produced.body),
            type(recorded.body),
        ):
            # Two differences that are not the code's: code that reaches a ``ctx.patched`` point for the
            # first time takes the new path (this run passed it with the code of its time), and a changed
            # retry policy decides past failures differently (a processor never decides them again). The
            # rest of this reaction is taken as recorded; it is checked when the code is re-executed against
            # the record: at the run's next input, or at the end for a run still open.
            self.pending.clear()
            self.trusting = True
            return None
        return self._diverged(recorded, describe(recorded), describe(produced), produced)

    def _feed(self, event: Event | None, tag: str, now_ms: int) -> Effects:
        if event is not None:
            self.state, fx = self.decider.handle(self.state, event, now_ms)
            return fx
        if self.state is None:
            return Effects(dead_letter="a timer of a run that has not started")
        return self.decider.fire_timer(self.state, tag, now_ms)

    def _resync(self, i: int) -> None:
        """Continue from the state the history itself gives after event ``i``."""
        self.pending.clear()
        self.cache.clear()
        self.state = fold(self.events[: i + 1])

    def _diverged(
        self, recorded: Event, history: str, code: str, produced: Event | None = None
    ) -> ReplayDivergence:
        position = _position(recorded)
        if position is None and produced is not None:
            position = _position(produced)
        return ReplayDivergence(recorded.run_id, self.workflow, recorded.seq, position, history, code)


def _position(event: Event) -> int | None:
    position = getattr(event.body, "position", None)
    return position if isinstance(position, int) and position >= 0 else None
