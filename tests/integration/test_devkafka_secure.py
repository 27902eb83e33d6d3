"""A secured local broker: the generated client properties work, and a client without them is told why not.

On the secured broker shared with the other files of its group (``shared_brokers.secured_broker``: SASL_SSL,
SCRAM-SHA-512, ACLs on, in a temp dir on free ports), which this file's tests only read from and log in to.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from orchestrator._devkafka import BrokerInfo
from orchestrator._devkafka.security import read_client_properties

pytestmark = pytest.mark.timeout(600)  # a JVM start on a shared 2-core machine
QUIET_LOGGER = logging.getLogger("tests.librdkafka")  # set up silent by tests/integration/conftest.py


def _client_settings(info: BrokerInfo) -> dict[str, Any]:
    assert info.client_properties is not None
    return {**read_client_properties(info.client_properties), "logger": QUIET_LOGGER}


def test_client_properties_work_for_producer_consumer_and_transactions(secured_broker: BrokerInfo) -> None:
    assert secured_broker.client_properties is not None
    assert stat.S_IMODE(secured_broker.client_properties.stat().st_mode) == 0o600
    settings = _client_settings(secured_broker)
    assert settings["security.protocol"] == "SASL_SSL"
    topic = f"t{uuid.uuid4().hex[:10]}"
    admin = AdminClient(settings)
    for future in admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=30).values():
        future.result(60)

    producer = Producer({**settings, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(60)
    producer.begin_transaction()
    for value in range(10):
        producer.produce(topic, value=str(value).encode())
    producer.commit_transaction(60)

    consumer = Consumer(
        {
            **settings,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < 10 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            seen.append(message.value() or b"")
    consumer.commit(asynchronous=False)
    consumer.close()
    assert seen == [str(value).encode() for value in range(10)]


def _first_error(settings: dict[str, Any]) -> KafkaError:
    errors: list[KafkaError] = []
    producer = Producer({**settings, "error_cb": errors.append})
    deadline = time.monotonic() + 60
    while not errors and time.monotonic() < deadline:
        producer.poll(0.5)
    assert errors, "no error reported within 60 s"
    return errors[0]


def test_client_without_credentials_is_refused_before_connecting(secured_broker: BrokerInfo) -> None:
    settings = _client_settings(secured_broker)
    del settings["sasl.username"], settings["sasl.password"]

    with pytest.raises(KafkaException, match=r"sasl\.username and sasl\.password must be set"):
        Producer(settings)


@pytest.mark.parametrize("how", ["unknown user", "wrong password"])
def test_client_with_wrong_credentials_gets_an_authentication_error(
    secured_broker: BrokerInfo, how: str
) -> None:
    settings = _client_settings(secured_broker)
    if how == "unknown user":
        settings["sasl.username"] = "nobody"
    else:
        settings["sasl.password"] = "not-the-password"

    error = _first_error(settings)

    assert error.code() == KafkaError._AUTHENTICATION
    assert "SASL authentication error" in error.str()
    assert "invalid credentials" in error.str()


def test_plaintext_client_is_not_served(secured_broker: BrokerInfo) -> None:
    admin = AdminClient({"bootstrap.servers": secured_broker.bootstrap, "logger": QUIET_LOGGER})
    with pytest.raises(KafkaException):  # the TLS listener drops its bytes; no metadata ever comes
        admin.list_topics(timeout=10)


def test_cli_and_broker_log_show_no_password(secured_broker: BrokerInfo) -> None:
    passwords = json.loads((secured_broker.data_dir / "secrets.json").read_text(encoding="utf-8")).values()
    passwords = [value for value in passwords if value not in ("orchestrator", "broker")]
    assert _client_settings(secured_broker)["sasl.password"] in passwords
    cli = Path(sys.executable).parent / "orchestrator"
    result = subprocess.run(
        [str(cli), "kafka", "status", "--dir", str(secured_broker.data_dir)],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "client.properties" in result.stdout
    broker_log = (secured_broker.data_dir / "broker.log").read_text(encoding="utf-8", errors="replace")
    for password in passwords:
        assert password not in result.stdout + result.stderr
        assert password not in broker_log


def _speak_tls_without_a_certificate(port: int, ca: str) -> None:
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"\x00\x00\x00\x00")
        if tls.recv(1) == b"":
            raise ConnectionError("closed by the controller")


def test_controller_listener_wants_a_broker_certificate(secured_broker: BrokerInfo) -> None:
    """Mutual TLS: a caller that trusts the CA but has no certificate of its own is turned away."""
    assert secured_broker.client_properties is not None
    ca = read_client_properties(secured_broker.client_properties)["ssl.ca.location"]
    # TLS 1.2 refuses in the handshake, TLS 1.3 right after it (the client's handshake ends first).
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
        _speak_tls_without_a_certificate(secured_broker.nodes[0].controller_port, ca)
    # Java answers a missing client certificate with a "bad certificate" alert (SSLV3_ALERT_BAD_CERTIFICATE).
    assert isinstance(refused.value, ConnectionError) or "CERTIFICATE" in str(refused.value).upper()
