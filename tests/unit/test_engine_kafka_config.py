"""Every client config the engine builds carries the operator's Kafka settings, and nothing bypasses them."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import orchestrator
from orchestrator._engine import kafka
from orchestrator._kafka_config import KafkaConfigError
from orchestrator.settings import Settings

PASSWORD = "pw-Kd93hQ1m"
SECURITY = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "orchestrator",
    "sasl.password": PASSWORD,
    "ssl.ca.location": "/etc/ca.pem",
}
SETTINGS = Settings(bootstrap_servers="b:9096", kafka=SECURITY)


@pytest.mark.parametrize(
    "build",
    [
        lambda s: kafka.base(s),
        lambda s: kafka.producer_config(s),
        lambda s: kafka.transactional_producer_config(s, "tx"),
        lambda s: kafka.consumer_config(s, "group"),
        lambda s: kafka.reader_config(s),
    ],
    ids=["admin", "producer", "transactional", "consumer", "reader"],
)
def test_every_builder_carries_the_security_settings(build: object) -> None:
    conf = build(SETTINGS)  # type: ignore[operator]
    assert {key: conf[key] for key in SECURITY} == SECURITY
    assert conf["bootstrap.servers"] == "b:9096"


def test_engine_guarantees_stay_and_operator_tuning_and_caller_overrides_apply() -> None:
    settings = Settings(kafka={"session.timeout.ms": "45000", "linger.ms": "5"})

    consumer = kafka.consumer_config(settings, "g", **{"linger.ms": 0})
    producer = kafka.transactional_producer_config(settings, "tx", **{"linger.ms": 20})

    assert consumer["isolation.level"] == "read_committed"
    assert consumer["enable.auto.commit"] is False
    assert consumer["session.timeout.ms"] == "45000"  # the operator's tuning over the engine's default
    assert producer["enable.idempotence"] is True and producer["transactional.id"] == "tx"
    assert producer["linger.ms"] == 20  # a component's own override wins over both


def test_a_config_shows_no_secret_when_logged(caplog: pytest.LogCaptureFixture) -> None:
    conf = kafka.producer_config(SETTINGS)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("producer config %s %r", conf, conf)
    assert PASSWORD not in caplog.text + repr(conf) + str(conf)
    assert "SCRAM-SHA-512" in caplog.text
    assert conf["sasl.password"] == PASSWORD  # the dict librdkafka reads has the real value


def test_a_refused_setting_is_named_and_its_secret_not_quoted() -> None:
    settings = Settings(kafka={**SECURITY, "ssl.ca.location": "/nonexistent/ca.pem"})
    conf = kafka.producer_config(settings, logger=logging.getLogger("tests.quiet"))

    with pytest.raises(KafkaConfigError, match=r"ssl\.ca\.location") as raised:
        kafka.new_producer(conf)

    assert PASSWORD not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert "ORCHESTRATOR_KAFKA" in str(raised.value)


# Modules that create clients themselves: kafka.py (the builders' home), the processor and access.py, whose
# configs come from kafka.py's builders. _devkafka talks to the local broker it runs, with its own settings.
_ALLOWED = {
    "_engine/kafka.py",
    "_engine/processor/transactions.py",  # its Producer is replaced by tests
    "_engine/processor/loop.py",
    "_engine/access.py",
}
_CLIENTS = {"Producer", "Consumer", "AdminClient"}


def test_no_module_makes_a_kafka_client_around_the_builders() -> None:
    root = Path(orchestrator.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative in _ALLOWED or relative.startswith("_devkafka/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in _CLIENTS:
                    offenders.append(f"{relative}:{node.lineno}")
    assert offenders == [], "create clients with kafka.new_producer/new_consumer/new_admin"
