"""The drift comparison behind ``topics plan|apply``, as a pure function."""

from __future__ import annotations

from orchestrator._topic_admin import ChangeKind, ObservedTopic, diff
from orchestrator.topology import TopicSpec

SPEC = TopicSpec(
    name="shop.inbox", partitions=4, replication_factor=1, config={"retention.ms": "1000"}, role="inbox"
)


def _observed(partitions: int = 4, replication: int = 1, retention: str = "1000") -> dict[str, ObservedTopic]:
    config = {"retention.ms": retention, "segment.bytes": "1073741824"}
    return {SPEC.name: ObservedTopic(SPEC.name, partitions, replication, config)}


def test_missing_topic_is_created() -> None:
    (change,) = diff([SPEC], {})
    assert (change.kind, change.allowed) == (ChangeKind.CREATE, True)


def test_matching_topic_has_no_changes_and_undeclared_keys_are_ignored() -> None:
    assert diff([SPEC], _observed()) == []


def test_config_drift_is_fixed_only_when_allowed() -> None:
    (change,) = diff([SPEC], _observed(retention="5"))
    assert (change.kind, change.key, change.current, change.desired) == (
        ChangeKind.UPDATE_CONFIG,
        "retention.ms",
        "5",
        "1000",
    )
    assert not change.allowed
    assert diff([SPEC], _observed(retention="5"), fix_config=True)[0].allowed


def test_fewer_partitions_grow_only_when_allowed() -> None:
    (change,) = diff([SPEC], _observed(partitions=2))
    assert (change.kind, change.allowed) == (ChangeKind.ADD_PARTITIONS, False)
    (change,) = diff([SPEC], _observed(partitions=2), allow_partition_increase=True)
    assert change.allowed


def test_more_partitions_and_other_replication_are_never_changed() -> None:
    changes = diff(
        [SPEC], _observed(partitions=8, replication=3), fix_config=True, allow_partition_increase=True
    )
    assert {(c.kind, c.allowed) for c in changes} == {
        (ChangeKind.TOO_MANY_PARTITIONS, False),
        (ChangeKind.REPLICATION_DRIFT, False),
    }


class _RacingAdmin:
    """A cluster where the broker answering metadata knows a just-created topic and the one answering
    describe_configs does not yet (seen on a 3-broker cluster: test_cluster_failover's client start)."""

    def list_topics(self, timeout: float) -> object:
        from types import SimpleNamespace

        partitions = {0: SimpleNamespace(replicas=[1, 2, 3])}
        return SimpleNamespace(topics={SPEC.name: SimpleNamespace(error=None, partitions=partitions)})

    def describe_configs(self, resources: list[object], request_timeout: float) -> dict[object, object]:
        from concurrent.futures import Future

        from confluent_kafka import KafkaError, KafkaException

        out: dict[object, object] = {}
        for resource in resources:
            future: Future[object] = Future()
            future.set_exception(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
            out[resource] = future
        return out


def test_a_topic_the_config_broker_does_not_know_yet_is_not_there_yet() -> None:
    """Metadata propagates broker by broker: a topic listed but unknown to describe_configs is still being
    created, so ``observe`` leaves it out (``apply`` then creates it, finds it exists, and waits for it)."""
    from orchestrator._topic_admin import observe

    assert observe(_RacingAdmin(), [SPEC.name]) == {}  # type: ignore[arg-type]
