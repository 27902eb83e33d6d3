"""A command that fails on Kafka ends with one line that says what failed, where, and what to check.

Why: ``main`` used to let a ``KafkaException`` (or a `TopicAdminError` caused by one) escape: the user got
a Rich traceback of librdkafka internals, and under ``--json`` an empty stdout. Every such failure is now
one of three kinds, each with its exit code (docs/cli-json.md) and, under ``--json``, an error document on
stdout: ``{"error": "...", "error_type": "...", "bootstrap": "..."}``.

- ``kafka_unreachable`` (exit 4): no broker answered (refused, unknown host, silence, a timeout);
  try again once the cluster is back.
- ``kafka_refused`` (exit 2): the cluster refused this client: its login or TLS handshake
  (`KafkaAccessError`), or an ACL (``*_AUTHORIZATION_FAILED``); fix the settings or the ACLs.
- ``kafka_failed`` (exit 4): any other error a Kafka request returned, with librdkafka's reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

from orchestrator._engine.access import KafkaAccessError
from orchestrator._engine.reach import KafkaUnreachableError

EXIT_KAFKA = 4
"""Kafka could not be reached, or a request to it failed: check the cluster, then try again."""
EXIT_REFUSED = 2
"""The cluster refused this client (login, TLS, ACL) or its settings are invalid: fix them first."""

_UNREACHABLE = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)
_DENIED = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.DELEGATION_TOKEN_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)
_CHECK_REACHABLE = (
    "Check that the cluster is running (a local one: `orchestrator kafka status`), that "
    "ORCHESTRATOR_BOOTSTRAP_SERVERS (or the app's bootstrap_servers) names it, and that this machine can "
    "connect to it."
)
_CHECK_ACLS = (
    'Check the ACLs of this client\'s principal (docs/operations.md, "Secured clusters") and its Kafka '
    "settings (ORCHESTRATOR_KAFKA__*, ORCHESTRATOR_KAFKA_CONFIG, ORCHESTRATOR_KAFKA_CONFIG_FILE)."
)
_KAFKA_ERROR_REPR = re.compile(r'KafkaError\{code=(\w+),val=-?\d+,str="(.*?)"\}')


@dataclass(frozen=True)
class Failure:
    """What the user is told: ``message`` (one line), ``kind`` (``error_type`` in JSON), the exit code."""

    message: str
    kind: str
    code: int
    bootstrap: str | None


def explain(exc: BaseException) -> Failure | None:
    """The `Failure` behind ``exc`` if it is a Kafka failure (itself or what caused it), else None."""
    if isinstance(exc, KafkaAccessError):
        return Failure(str(exc), "kafka_refused", EXIT_REFUSED, configured_bootstrap())
    if isinstance(exc, KafkaUnreachableError):
        return Failure(
            f"{exc.args[0].str()}. {_CHECK_REACHABLE}", "kafka_unreachable", EXIT_KAFKA, exc.bootstrap
        )
    err = _kafka_error(exc)
    if err is None:
        return None
    bootstrap = configured_bootstrap()
    where = f"Kafka at {bootstrap}" if bootstrap else "Kafka"
    what = _readable(str(exc)) if not isinstance(exc, KafkaException) else err.str()
    if err.code() in _UNREACHABLE:
        return Failure(
            f"{where} did not answer: {what}. {_CHECK_REACHABLE}", "kafka_unreachable", EXIT_KAFKA, bootstrap
        )
    if err.code() in _DENIED:
        return Failure(
            f"{where} refused this client: {what}. {_CHECK_ACLS}", "kafka_refused", EXIT_REFUSED, bootstrap
        )
    return Failure(
        f"a request to {where} failed: {what} ({err.name()}).", "kafka_failed", EXIT_KAFKA, bootstrap
    )


def _kafka_error(exc: BaseException) -> KafkaError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KafkaException) and seen.args and isinstance(seen.args[0], KafkaError):
            return seen.args[0]
        seen = seen.__cause__
    return None


def _readable(text: str) -> str:
    """``cannot list topics: KafkaError{code=_TRANSPORT,...,str="..."}`` -> ``cannot list topics: ...``."""
    return _KAFKA_ERROR_REPR.sub(lambda m: m.group(2), text)


def configured_bootstrap() -> str | None:
    """The bootstrap servers the settings name (env, ``.env``, properties file); None if they do not load.

    A command's app may set other ones in code; the failures that know their address (`first_contact`'s)
    carry it themselves.
    """
    from orchestrator.settings import load_settings

    try:
        return load_settings().bootstrap_servers
    except Exception:  # noqa: BLE001 - bad settings are reported by whatever needs them, not here
        return None
