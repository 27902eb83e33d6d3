"""Which processor keeps which partition warm (ADR 0024): a choice every member computes alone, from the
group's description, and must agree on; the owner never keeps its own partition as a standby."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupState, TopicPartition

from orchestrator._engine.faults import FaultLog, Retrier
from orchestrator._engine.processor.config import ProcessorTopics
from orchestrator._engine.processor.standby import (
    KEYED,
    RUN,
    Standbys,
    choose,
    group_view,
    standbys_of,
)
from orchestrator._engine.processor.state_manager import StateManager
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore
from orchestrator.settings import Settings

_TOPICS = ProcessorTopics("in", "hist", "cl", "out", "dlq", "keyed", "keyed-cl", ())
MEMBERS = ["proc-a", "proc-b", "proc-c", "proc-d"]


def _owners(partitions: int, members: list[str]) -> dict[tuple[str, int], str | None]:
    """Range-like ownership: each stage's partitions shared out in order."""
    out: dict[tuple[str, int], str | None] = {}
    for stage in (RUN, KEYED):
        for p in range(partitions):
            out[(stage, p)] = members[p * len(members) // partitions]
    return out


def test_every_member_agrees_whatever_order_it_lists_the_members_in() -> None:
    owners = _owners(12, MEMBERS)
    for replicas in (1, 2):
        views = []
        for order in itertools.permutations(MEMBERS):
            views.append({m: choose(m, owners, list(order), replicas) for m in MEMBERS})
        assert all(v == views[0] for v in views)
        # each partition has exactly `replicas` standbys, among the members
        for key in owners:
            holders = [m for m in MEMBERS if key in views[0][m]]
            assert len(holders) == replicas, key


def test_the_owner_is_never_its_own_standby() -> None:
    owners = _owners(16, MEMBERS)
    for replicas in (1, 2, 3):
        for member in MEMBERS:
            for key in choose(member, owners, MEMBERS, replicas):
                assert owners[key] != member


def test_more_replicas_than_other_members_is_capped() -> None:
    owners = _owners(4, ["a", "b"])
    assert standbys_of((RUN, 0), "a", ["a", "b"], 5) == ["b"]
    assert choose("b", owners, ["a", "b"], 5) == {k for k, o in owners.items() if o == "a"}
    assert choose("a", {(RUN, 0): "a"}, ["a"], 3) == set()  # alone: nothing to keep warm
    assert standbys_of((RUN, 0), "a", ["a", "b", "c"], 0) == []


def test_standbys_spread_evenly() -> None:
    owners = _owners(64, MEMBERS)
    counts = [len(choose(m, owners, MEMBERS, 1)) for m in MEMBERS]
    assert sum(counts) == 128
    assert max(counts) - min(counts) <= 24, counts  # rendezvous hashing: binomial spread around 32


def test_a_member_joining_moves_only_the_standbys_it_wins_where_the_owner_stayed() -> None:
    """Rendezvous hashing: where a partition keeps its owner, a member joining changes its standby only
    by putting the newcomer there. The range assignor does reassign owners on a join, though: where the
    owner changed, the standby may move between old members too (the new owner cannot be its own standby;
    the old one, holding the warm store, becomes eligible). ADR 0024 states both."""
    before_owners = _owners(32, MEMBERS[:3])
    after_owners = _owners(32, MEMBERS)  # what range gives 4 members: most partitions change owner
    stayed = [k for k in before_owners if before_owners[k] == after_owners[k]]
    moved_owner = [k for k in before_owners if before_owners[k] != after_owners[k]]
    assert stayed and moved_owner
    for key in stayed:
        before = standbys_of(key, before_owners[key], MEMBERS[:3], 1)
        after = standbys_of(key, after_owners[key], MEMBERS, 1)
        assert after in (before, ["proc-d"]), key
    # with the owners fixed, the old members only lose standbys, and only to the newcomer
    before = {m: choose(m, before_owners, MEMBERS[:3], 1) for m in MEMBERS[:3]}
    after = {m: choose(m, before_owners, MEMBERS, 1) for m in MEMBERS}
    for m in MEMBERS[:3]:
        assert after[m] <= before[m], m
    assert set().union(*(before[m] - after[m] for m in MEMBERS[:3])) == after["proc-d"]
    # and where the owner changed, an old member's standby can move to another old member
    shifted = [
        k
        for k in moved_owner
        if set(standbys_of(k, after_owners[k], MEMBERS, 1)) - {"proc-d"}
        and standbys_of(k, after_owners[k], MEMBERS, 1) != standbys_of(k, before_owners[k], MEMBERS[:3], 1)
    ]
    assert shifted  # the claim "others never move" does not hold under range reassignment


def _member(instance: str, *tps: tuple[str, int]) -> Any:
    assignment = SimpleNamespace(topic_partitions=[TopicPartition(t, p) for t, p in tps])
    return SimpleNamespace(group_instance_id=f"processor-{instance}", assignment=assignment)


def test_group_view_reads_instance_ids_and_owners_and_waits_out_a_rebalance() -> None:
    members = [_member("a", ("in", 0), ("keyed", 0), ("users", 0)), _member("b", ("in", 1), ("keyed", 1))]
    stable = SimpleNamespace(state=ConsumerGroupState.STABLE, members=members)
    view = group_view(stable, _TOPICS)
    assert view is not None
    assert view.members == ("a", "b")
    assert view.owners == {(RUN, 0): "a", (KEYED, 0): "a", (RUN, 1): "b", (KEYED, 1): "b"}
    moving = SimpleNamespace(state=ConsumerGroupState.PREPARING_REBALANCING, members=members)
    assert group_view(moving, _TOPICS) is None


# -- the hand-over between standby and active store, without a broker ---------------------------------------
def _standbys(tmp_path: Path) -> Standbys:
    return Standbys(Settings(partitions=2), _TOPICS, tmp_path, "a", 1, "g", describe=lambda: None)


def test_release_closes_the_standby_before_the_active_store_opens_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The assign path releases the standby first (RocksDB lets one opener hold a directory), then the
    restore starts from the offset the standby reached; the log line counts the warm stores."""
    standbys = _standbys(tmp_path)
    warm = PartitionStore(tmp_path / "p0", 0)
    warm.restore_batch([(b"r/x", b"state")], 42)
    warm.close()
    standbys._wanted = {(RUN, 0)}
    with standbys._lock:  # what _reconcile leaves once the consumer is assigned the partition at 42
        from orchestrator._engine.processor.standby import _Replica

        standbys._replicas[(RUN, 0)] = _Replica(standbys._open((RUN, 0)), position=42)

    manager = StateManager(
        tmp_path, _TOPICS, Settings(), Retrier(FaultLog(logging.getLogger("t")), lambda: True)
    )
    manager.standbys = standbys
    starts: list[int | None] = []

    def fake_restore(settings: Any, targets: list[tuple[PartitionStore, str]]) -> int:
        starts.extend(store.meta_offset(META_CHANGELOG_OFFSET) for store, _ in targets)
        return 3

    monkeypatch.setattr("orchestrator._engine.processor.state_manager.restore", fake_restore)
    assert manager.assign([TopicPartition("in", 0), TopicPartition("keyed", 1)]) == 3
    assert starts == [42, None]  # the active store opened the standby's directory, warm
    assert manager.last_restore.warm == 1 and manager.last_restore.stores == 2
    assert standbys.positions() == {}
    assert manager.run_stores[0].get(b"r/x") == b"state"
    # an owned partition is never opened as a standby, even if a stale refresh asks for it
    standbys._wanted = {(RUN, 0), (KEYED, 1)}
    standbys._consumer = SimpleNamespace(incremental_unassign=lambda tps: None)
    standbys._reconcile()
    assert standbys.positions() == {}
    # revoked: the active stores become standbys (wanted until the next refresh says otherwise)
    manager.revoke([TopicPartition("in", 0), TopicPartition("keyed", 1)])
    assert (RUN, 0) in standbys._wanted and (RUN, 0) not in standbys._active
    standbys.close()
