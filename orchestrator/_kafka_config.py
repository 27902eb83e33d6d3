"""The operator's librdkafka settings (security, TLS, SASL, tuning): read, checked, and kept out of sight.

Every Kafka client the engine makes gets these settings (``orchestrator._engine.kafka`` merges them into
each config), so a secured cluster needs them set once, in ``Settings.kafka``: from
``ORCHESTRATOR_KAFKA__<KEY>`` variables, a JSON ``ORCHESTRATOR_KAFKA_CONFIG``, an ``.env`` file or a
Java-style properties file (``ORCHESTRATOR_KAFKA_CONFIG_FILE``, the format ``orchestrator kafka start
--secure`` writes).

Secrets (passwords, client secrets, private keys) are held as ``SecretStr`` and only unwrapped into the
dict handed to librdkafka, whose own ``repr`` masks them again: a config that is logged, put in an error
message or shown by a debugger never shows them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from orchestrator.errors import OrchestratorError

REDACTED = "***"

# librdkafka's sensitive properties (sasl.password, ssl.key.password, ssl.keystore.password, ssl.key.pem,
# sasl.oauthbearer.client.secret, sasl.oauthbearer.config, ...) and any future one named like them.
_SECRET_KEY = re.compile(r"password|secret|passphrase|jaas|credential|(^|\.)key\.pem$")
_SECRET_KEYS = frozenset({"sasl.oauthbearer.config"})

ENGINE_OWNED: dict[str, str] = {
    "group.id": "each component has its own consumer group",
    "group.instance.id": "processors set their static membership themselves",
    "transactional.id": "each processor derives its transactional id from its instance id",
    "isolation.level": "records of aborted transactions must never be acted on (read_committed)",
    "enable.auto.commit": "offsets are committed with the state they produced",
    "enable.auto.offset.store": "offsets are committed with the state they produced",
    "enable.idempotence": "producers must be idempotent for exactly-once delivery",
    "acks": "idempotent producers need acks=all",
    "request.required.acks": "idempotent producers need acks=all",
    "partitioner": "records must land where the engine's murmur2 partitioning says",
    "partition.assignment.strategy": "processors need range assignment for co-partitioned inputs",
    "enable.partition.eof": "readers rely on end-of-partition events",
}
"""Settings the engine's correctness depends on: refused (with the reason) rather than silently overridden."""

_JAVA_ONLY: dict[str, str] = {
    "sasl.jaas.config": "set sasl.username and sasl.password instead (librdkafka has no JAAS)",
    "ssl.truststore.location": "set ssl.ca.location to a PEM file of the CA instead",
    "ssl.truststore.password": "set ssl.ca.location to a PEM file of the CA instead",
    "ssl.truststore.type": "set ssl.ca.location to a PEM file of the CA instead",
    "sasl.login.callback.handler.class": "use sasl.oauthbearer.method=oidc and the sasl.oauthbearer.* keys",
    "sasl.client.callback.handler.class": "use librdkafka's sasl.* settings",
}
"""Java client settings that Confluent's, AWS's and Aiven's sample files carry and librdkafka rejects."""

_BOOTSTRAP_KEYS = ("bootstrap.servers", "metadata.broker.list")


class KafkaConfigError(OrchestratorError, ValueError):
    """The Kafka client settings cannot be used; the message names the setting, never a secret's value."""


def is_secret(key: str) -> bool:
    """Whether the value of librdkafka setting ``key`` must never be shown."""
    return key in _SECRET_KEYS or bool(_SECRET_KEY.search(key))


def normalize_key(key: str) -> str:
    """``SASL_MECHANISM`` (an environment variable's spelling) -> ``sasl.mechanism``.

    No librdkafka property has an underscore in its name, so the mapping is safe both ways.
    """
    return key.strip().lower().replace("_", ".")


def normalize(values: Mapping[str, Any], origin: str) -> dict[str, str | SecretStr]:
    """Keys in librdkafka's spelling, values as strings (secrets as ``SecretStr``), checked.

    Later keys win, so a per-key variable given after a JSON object overrides it. Raises
    ``KafkaConfigError`` naming ``origin`` for a setting the engine owns or a Java-only setting.
    """
    out: dict[str, str | SecretStr] = {}
    for raw_key, raw_value in values.items():
        key = normalize_key(str(raw_key))
        if key in ENGINE_OWNED:
            raise KafkaConfigError(
                f"Kafka setting {key!r} ({origin}) is set by the engine: {ENGINE_OWNED[key]}. Remove it."
            )
        if key in _JAVA_ONLY:
            raise KafkaConfigError(
                f"Kafka setting {key!r} ({origin}) is a Java client setting: {_JAVA_ONLY[key]}."
            )
        value = _as_text(key, raw_value, origin)
        out[key] = SecretStr(value) if is_secret(key) else value
    return out


def _as_text(key: str, value: Any, origin: str) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    hint = " (in a variable name only KAFKA is followed by __: ORCHESTRATOR_KAFKA__SASL_MECHANISM)"
    raise KafkaConfigError(
        f"Kafka setting {key!r} ({origin}) must be a string or a number, not {type(value).__name__}"
        + (hint if isinstance(value, dict) else "")
    )


def read_properties(path: Path) -> dict[str, str]:
    """``key=value`` (or ``key: value``, ``key value``) lines of a Java-style properties file.

    ``#`` and ``!`` start comments and a trailing backslash continues a line, as in the files Confluent
    Cloud, MSK and Aiven hand out and ``kafka start --secure`` writes. Values are taken verbatim otherwise
    (no escape processing): a Windows path keeps its backslashes.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaConfigError(
            f"cannot read the Kafka client properties file {path} (ORCHESTRATOR_KAFKA_CONFIG_FILE): "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    values: dict[str, str] = {}
    for number, line in _logical_lines(text):
        key, value = _split(line)
        if not key:
            raise KafkaConfigError(f"{path}:{number}: expected key=value")
        values[key] = value
    return values


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip() if pending is None else raw.lstrip()
        if pending is None and (not line or line[0] in "#!"):
            continue
        start, head = pending if pending is not None else (number, "")
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = (start, head + line[:-1])
            continue
        pending = None
        lines.append((start, head + line))
    if pending is not None:
        lines.append(pending)
    return lines


def _split(line: str) -> tuple[str, str]:
    match = re.match(r"([^=:\s]+)\s*[=:]?\s*(.*)$", line)
    if match is None:
        return "", ""
    return match.group(1), match.group(2).strip()


def pop_bootstrap(values: dict[str, str | SecretStr]) -> str | None:
    """Remove and return the bootstrap servers a config names: ``Settings.bootstrap_servers`` holds them."""
    found: str | None = None
    for key in _BOOTSTRAP_KEYS:
        value = values.pop(key, None)
        if value is not None and found is None:
            found = value.get_secret_value() if isinstance(value, SecretStr) else value
    return found


def redacted(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every secret masked, for reprs and messages."""
    return {key: REDACTED if is_secret(key) else value for key, value in values.items()}


class ClientConfig(dict[str, Any]):
    """The dict handed to a librdkafka client: plain values inside, secrets masked in ``repr``/``str``.

    A config that ends up in a log line, an assertion message or a traceback's locals shows ``***`` for
    every secret; librdkafka reads the real values (the constructors copy the dict).
    """

    def __repr__(self) -> str:
        return repr(redacted(self))

    __str__ = __repr__


def scrub(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret of ``config`` masked: for messages that may quote a config."""
    for key, value in config.items():
        if is_secret(key) and isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return text
