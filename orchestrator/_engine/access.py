"""Telling a refused login from a broker that is away, so a wrong password fails fast and says so.

librdkafka treats a failed SASL login or TLS handshake like any lost connection: requests time out with
"Broker transport failure" or "All broker connections are down", and the real reason only reaches an
``error_cb``. The engine rides out outages by retrying such errors, which with wrong credentials would
retry forever. So where a first contact with the cluster fails, `check` asks once more with a client
that listens to ``error_cb``, and turns an authentication or TLS failure into a `KafkaAccessError` that
names the settings to fix. A broker that is merely down gives no such answer and the original error
stands, so outages are handled as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from orchestrator._kafka_config import ClientConfig, scrub
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings

_QUIET = logging.getLogger("orchestrator.kafka.access")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

_TLS_HINTS = ("SSL handshake failed", "certificate verify failed", "ssl.ca.location")


class KafkaAccessError(OrchestratorError):
    """The cluster refused this client's login or TLS handshake: its Kafka settings need fixing."""


def check(settings: Settings, conf: ClientConfig, timeout: float = 10.0) -> KafkaAccessError | None:
    """A `KafkaAccessError` if the cluster refuses a client with ``conf``; None if it answers or is away.

    A refused login is reported before librdkafka gives up on the broker (all brokers down), so the
    first "all brokers down" without a refusal before it means the broker is away: no need to wait on.
    """
    errors: list[KafkaError] = []
    listening: dict[str, Any] = {**conf, "logger": _QUIET, "error_cb": errors.append}
    admin = AdminClient(listening)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
            return None
        except KafkaException:
            pass
        admin.poll(0)
        for err in errors:
            refused = _refusal(settings, err, conf)
            if refused is not None:
                return refused
            if err.code() == KafkaError._ALL_BROKERS_DOWN:
                return None
    return None


def _refusal(settings: Settings, err: KafkaError, conf: ClientConfig) -> KafkaAccessError | None:
    text = scrub(err.str(), conf)
    where = f"Kafka at {settings.bootstrap_servers} refused this client: {text}."
    if err.code() == KafkaError._AUTHENTICATION:
        return KafkaAccessError(
            f"{where} Check security.protocol, sasl.mechanism, sasl.username and sasl.password "
            "(ORCHESTRATOR_KAFKA__*, ORCHESTRATOR_KAFKA_CONFIG or ORCHESTRATOR_KAFKA_CONFIG_FILE)."
        )
    if err.code() == KafkaError._SSL or any(hint in text for hint in _TLS_HINTS):
        return KafkaAccessError(
            f"{where} Check security.protocol, ssl.ca.location and "
            "ssl.endpoint.identification.algorithm (ORCHESTRATOR_KAFKA__*, ORCHESTRATOR_KAFKA_CONFIG_FILE)."
        )
    return None


def raise_if_refused(settings: Settings, conf: ClientConfig) -> None:
    """Called where a first contact failed: raise the `KafkaAccessError` behind it, if that is what it was."""
    refused = check(settings, conf)
    if refused is not None:
        raise refused


_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "a topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "a consumer group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "a transactional id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "the cluster",
}


DENIED_CODES = frozenset(_DENIED)
"""librdkafka's codes for a request the cluster's ACLs refused."""


def denied(
    settings: Settings, exc: BaseException, component: str, doing: str = ""
) -> KafkaAccessError | None:
    """A `KafkaAccessError` if ``exc`` (or what it was raised from) is an ACL denial; None otherwise.

    Why: the login worked, so nothing above sees a refusal, and a denied call would otherwise be retried
    as if the broker were unsettled, or end with librdkafka's bare "Authorization failed". The message
    names the principal, what was denied (``exc``, or ``doing`` where librdkafka's error does not say which
    resource) and the command that lists the ACLs this ``component`` needs (ADR 0021).
    """
    seen: BaseException | None = exc
    while seen is not None:
        err = seen.args[0] if isinstance(seen, KafkaException) and seen.args else None
        if isinstance(err, KafkaError) and err.code() in _DENIED:
            user = settings.kafka.get("sasl.username", "this client")
            return KafkaAccessError(
                f"Kafka at {settings.bootstrap_servers} denied {user} access to {_DENIED[err.code()]}"
                f"{f' ({doing})' if doing else ''}: "
                f"{exc}. Grant the {component}'s principal the ACLs listed by `orchestrator acls plan "
                f"--app APP --component {component}` (a topic it may not Describe looks missing, so the "
                "engine then tries to create it); create the topics beforehand with `orchestrator topics "
                "apply` as an admin."
            )
        seen = seen.__cause__
    return None
