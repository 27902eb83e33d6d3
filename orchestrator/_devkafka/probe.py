"""Is a port free, and does a broker really answer there?

An open TCP port is not enough to call a broker ready for our purposes, so readiness is a Kafka request
(metadata via the AdminClient). The TCP connect comes first only because librdkafka logs every refused
connection, which would fill the terminal while the JVM boots.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Mapping
from typing import Any

import psutil
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from orchestrator._devkafka.config import LOOPBACK

_QUIET = logging.getLogger("orchestrator.devkafka.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if nothing listens on ``host:port``; SO_REUSEADDR mirrors the JVM, so TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    """A best-effort description of who listens on ``port``, to make the error message actionable."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"pid {conn.pid}"
    return "another process"


def tcp_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def admin_client(bootstrap: str, client_config: Mapping[str, str] | None = None) -> AdminClient:
    """An AdminClient whose librdkafka logs are swallowed: failures surface as exceptions instead.

    ``client_config`` carries the security settings of a secured broker (its ``bootstrap.servers`` is
    overridden by ``bootstrap``, so one node of a cluster can be asked on its own).
    """
    conf: dict[str, Any] = {
        **(client_config or {}), "bootstrap.servers": bootstrap, "logger": _QUIET, "socket.timeout.ms": 5000,
    }  # fmt: skip
    return AdminClient(conf)


def answers(admin: AdminClient, timeout: float = 3.0, brokers: int = 1) -> bool:
    """True if the broker returns cluster metadata listing at least ``brokers`` live brokers."""
    return live_brokers(admin, timeout) >= brokers


def live_brokers(admin: AdminClient, timeout: float = 3.0) -> int:
    """How many brokers the cluster's metadata lists (fenced or stopped ones are left out); 0 on failure."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return 0
    return len(metadata.brokers)


def broker_answers(
    bootstrap: str, timeout: float = 3.0, client_config: Mapping[str, str] | None = None, brokers: int = 1
) -> bool:
    """One-shot check for callers that do not keep an AdminClient around (``bootstrap`` may list several)."""
    for address in bootstrap.split(","):
        host, _, port = address.rpartition(":")
        if tcp_open(int(port), host or LOOPBACK):
            return answers(admin_client(bootstrap, client_config), timeout, brokers)
    return False
