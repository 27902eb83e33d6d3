"""How ``main`` words a Kafka failure: which kind, which exit code, a readable reason (no KafkaError repr)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from orchestrator._engine.access import KafkaAccessError
from orchestrator._engine.reach import KafkaUnreachableError
from orchestrator._topic_admin import TopicAdminError
from orchestrator.cli._failures import EXIT_KAFKA, EXIT_REFUSED, explain


@pytest.fixture(autouse=True)
def _bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_BOOTSTRAP_SERVERS", "kafka-1:9092")


def _wrapped(code: int, text: str) -> TopicAdminError:
    """What ensure_topics raises: a TopicAdminError caused by librdkafka's KafkaException."""
    cause = KafkaException(KafkaError(code, text))
    try:
        raise TopicAdminError(f"cannot list topics: {cause.args[0]}") from cause
    except TopicAdminError as exc:
        return exc


def test_an_unreachable_bootstrap_names_its_address_and_what_to_check() -> None:
    failure = explain(KafkaUnreachableError("10.0.0.9:9092", "Connect to ipv4#10.0.0.9:9092 failed"))
    assert failure is not None
    assert (failure.kind, failure.code, failure.bootstrap) == (
        "kafka_unreachable",
        EXIT_KAFKA,
        "10.0.0.9:9092",
    )
    assert failure.message.startswith("Kafka at 10.0.0.9:9092 cannot be reached: Connect to ipv4#")
    assert "ORCHESTRATOR_BOOTSTRAP_SERVERS" in failure.message


def test_a_wrapped_transport_error_is_unreachable_and_readable() -> None:
    failure = explain(
        _wrapped(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")
    )
    assert failure is not None
    assert (failure.kind, failure.code) == ("kafka_unreachable", EXIT_KAFKA)
    assert failure.message.startswith(
        "Kafka at kafka-1:9092 did not answer: cannot list topics: Failed to get metadata: Local: Broker "
        "transport failure. Check"
    )
    assert "KafkaError{" not in failure.message


def test_acl_and_login_refusals_are_settings_to_fix() -> None:
    denied = explain(
        KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed"))
    )
    assert denied is not None
    assert (denied.kind, denied.code) == ("kafka_refused", EXIT_REFUSED)
    assert "refused this client: Topic authorization failed" in denied.message and "ACLs" in denied.message
    login = explain(KafkaAccessError("Kafka at kafka-1:9092 refused this client: SASL authentication error."))
    assert login is not None and (login.kind, login.code) == ("kafka_refused", EXIT_REFUSED)


def test_other_kafka_errors_say_what_failed() -> None:
    failure = explain(
        KafkaException(KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, "Replication factor: 3"))
    )
    assert failure is not None
    assert (failure.kind, failure.code) == ("kafka_failed", EXIT_KAFKA)
    assert (
        failure.message
        == "a request to Kafka at kafka-1:9092 failed: Replication factor: 3 (INVALID_REPLICATION_FACTOR)."
    )


def test_anything_else_is_not_a_kafka_failure() -> None:
    assert explain(RuntimeError("boom")) is None
    assert explain(TopicAdminError("no such topic")) is None
