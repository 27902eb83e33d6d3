"""A real local Apache Kafka broker or cluster for development, tests and demos (KRaft, loopback).

Not for production: it exists so that every developer, test session and CI run exercises the engine
against the genuine broker (transactions, fencing, compaction) rather than a mock, starting from nothing
but Java and Maven.
"""

from __future__ import annotations

from orchestrator._devkafka.broker import (
    BrokerInfo,
    NodeInfo,
    default_data_dir,
    kill_node,
    restart_node,
    start,
    status,
    stop,
)
from orchestrator._devkafka.errors import DevKafkaError
from orchestrator._devkafka.jars import KAFKA_VERSION, ensure_jars

__all__ = [
    "KAFKA_VERSION",
    "BrokerInfo",
    "DevKafkaError",
    "NodeInfo",
    "default_data_dir",
    "ensure_jars",
    "kill_node",
    "restart_node",
    "start",
    "status",
    "stop",
]
