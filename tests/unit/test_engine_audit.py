"""Replay's fold over history records: a run it cannot rebuild is not verifiable, and the rest carry on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from orchestrator._engine import audit
from orchestrator._engine import events as ev
from orchestrator._engine.events import Event
from orchestrator._engine.unreadable import JUNK, NOT_FOLDING, Skipped, Unreadable, Where

TOPIC = "app.history"


class History:
    """History records of several runs in one partition, in the order they are added."""

    def __init__(self) -> None:
        self.items: list[tuple[Where, Event] | Unreadable] = []
        self.seqs: dict[str, int] = {}

    def add(self, run_id: str, body: object, *, seq: int | None = None) -> None:
        seq = self.seqs.get(run_id, 0) if seq is None else seq
        self.seqs[run_id] = seq + 1
        where = Where(TOPIC, 0, len(self.items), run_id.encode())
        self.items.append((where, Event(f"{run_id}/{seq}", run_id, "wf", 1_000 + seq, body, seq=seq)))

    def junk(self, run_id: str | None) -> None:
        """An unreadable record (it takes the run's next seq, as the lost event did)."""
        key = run_id.encode() if run_id is not None else None
        self.items.append(Unreadable(Where(TOPIC, 0, len(self.items), key), JUNK, "junk"))
        if run_id is not None:
            self.seqs[run_id] = self.seqs.get(run_id, 0) + 1

    def run(self, run_id: str) -> None:
        """A complete one-step run."""
        self.add(run_id, ev.RunStarted(input=b"1"))
        self.add(run_id, ev.StepScheduled(0, "s", "default", 1, b"", f"{run_id}/0/s"))
        self.add(run_id, ev.StepCompleted(0, 1, b"2", 1_001, 1_002))
        self.add(run_id, ev.RunCompleted(b"2"))

    def records(self, skipped: Skipped) -> Iterator[tuple[Where, Event]]:
        """What `audit.history_records` yields: events, with unreadable records going to ``skipped``."""
        for item in self.items:
            if isinstance(item, Unreadable):
                skipped(item)
            else:
                yield item


def test_good_runs_rebuild_while_broken_ones_are_reported_not_verifiable() -> None:
    h = History()
    h.run("good")
    h.add("no-start", ev.StepScheduled(0, "s", "default", 1, b"", "k"))  # does not begin with RunStarted
    h.add("gap", ev.RunStarted(input=b"1"))
    h.add("gap", ev.StepScheduled(0, "s", "default", 1, b"", "k"))
    h.add("gap", ev.RunCompleted(b"2"), seq=3)  # seq 2 is nowhere
    h.run("twice")
    h.add("twice", ev.RunCompleted(b"2"), seq=3)  # seq 3 again
    h.add("bad-fold", ev.RunStarted(input=b"1"))
    h.add("bad-fold", ev.StepCompleted(4, 1, b"2", 1, 2))  # position 4 was never scheduled
    h.add("bad-fold", ev.RunCompleted(b"2"))  # not folded: the run is already broken
    h.add("hole", ev.RunStarted(input=b"1"))
    h.junk("hole")  # the run's seq 1, unreadable
    h.add("hole", ev.RunCompleted(b"2"))
    h.run("tail")
    h.junk("tail")  # after its last event: it still makes the run unverifiable
    h.junk(None)  # a record that names no run
    h.run("good2")
    skipped = Skipped()
    rebuilt = audit.rebuild(h.records(skipped), skipped=skipped)
    assert sorted(rebuilt) == ["good", "good2"]
    assert rebuilt["good"].status == "completed" and rebuilt["good"].next_seq == 4
    assert sorted(rebuilt.unverifiable) == ["bad-fold", "gap", "hole", "no-start", "tail", "twice"]
    assert "already at seq 4" in rebuilt.unverifiable["twice"]
    assert "RunStarted" in rebuilt.unverifiable["no-start"]
    assert "seq 2" in rebuilt.unverifiable["gap"]
    assert "position 4" in rebuilt.unverifiable["bad-fold"]
    assert f"{TOPIC}[0]@" in rebuilt.unverifiable["hole"] and JUNK in rebuilt.unverifiable["hole"]
    # Every event that did not fold is reported once, where it is; the hole's gap is explained already.
    folds = [(u.where.key_text, u.reason) for u in skipped.records if u.reason == NOT_FOLDING]
    assert [run_id for run_id, _ in folds] == ["no-start", "gap", "twice", "bad-fold"]
    assert len(skipped) == 7


def test_with_a_time_window_runs_that_began_before_it_are_left_out_not_reported() -> None:
    h = History()
    h.add("earlier", ev.RunCompleted(b"2"), seq=5)
    h.run("inside")
    skipped = Skipped()
    rebuilt = audit.rebuild(h.records(skipped), skipped=skipped, window=True)
    assert list(rebuilt) == ["inside"]
    assert rebuilt.began_before == {"earlier"} and not rebuilt.unverifiable and not skipped.records


def test_judge_compares_only_verifiable_runs() -> None:
    h = History()
    for run_id in ("same", "differs", "live-unreadable", "hole"):
        h.run(run_id)
    h.junk("hole")
    skipped = Skipped()
    rebuilt = audit.rebuild(h.records(skipped), skipped=skipped)
    live = {k: replace(v) for k, v in rebuilt.items() if k != "live-unreadable"}
    live["differs"] = replace(live["differs"], status="failed")
    live["only-live"] = replace(live["same"], run_id="only-live")
    report = audit.judge(rebuilt, live, {"live-unreadable": "changelog[0]@3: junk bytes: junk"})
    assert {(d.run_id, d.field) for d in report.differences} == {
        ("differs", "status"),
        ("only-live", "(run)"),
    }
    assert sorted(report.unverifiable) == ["hole", "live-unreadable"]
    assert report.compared == 3  # "same", "differs" and "only-live" (which has no history)


def test_skipped_records_of_other_topics_do_not_make_a_run_unverifiable() -> None:
    h = History()
    h.run("r/x")  # a run id that looks like a changelog key
    skipped = Skipped()
    skipped(Unreadable(Where("app.changelog", 0, 3, b"r/x"), JUNK, "junk"))  # run "x"'s live state
    rebuilt = audit.rebuild(h.records(skipped), skipped=skipped)
    assert list(rebuilt) == ["r/x"] and not rebuilt.unverifiable
