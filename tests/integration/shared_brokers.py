"""Brokers that several test files share: the secured broker and the 3-broker cluster (fixtures for conftest).

Each is started once, on first use, and stopped right after the last test of the session that uses it (not
at session end: a JVM left idle on a 2-core machine costs the tests that follow). Their users run in one
process, one after the other: ``tests/scheduling.py`` lists them, one group per fixture, and the scheduler in
``tests/conftest.py`` hands each group to one pytest-xdist worker as a whole.

The 3-broker cluster is handed to ``test_devkafka_cluster`` first (listed first in its group), on a fresh
cluster: that test checks that the internal topics it makes while a broker is down get three replicas, and
asserts that they did not exist before. ``test_cluster_failover`` then runs on the same cluster, whose killed
broker is back in every ISR by then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_support import free_ports

from orchestrator import _devkafka
from orchestrator._devkafka import BrokerInfo

SHARED = ("secured_broker", "three_brokers")
"""The fixtures stopped after their last user (``release_after_last_user``); each has a group in
``tests/scheduling.py``."""

_stops: dict[str, Callable[[], None]] = {}


def _started(name: str, data_dir: Path, info: BrokerInfo) -> Iterator[BrokerInfo]:
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            _devkafka.stop(data_dir)

    _stops[name] = stop
    try:
        yield info
    finally:
        stop()
        _stops.pop(name, None)


@pytest.fixture(scope="session")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A broker of its own with ``kafka start --secure``: SASL_SSL, SCRAM-SHA-512, ACLs on (no access for
    anyone but the super users), its client.properties in ``info.client_properties``."""
    data_dir = tmp_path_factory.mktemp("secured") / "kafka"
    port, controller_port = free_ports(2)
    info = _devkafka.start(data_dir, port, controller_port, secure=True, heap_mb=384)
    print(f"secured broker ready in {info.seconds:.1f} s")
    yield from _started("secured_broker", data_dir, info)


@pytest.fixture(scope="session")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerInfo, Path]]:
    """A private 3-broker KRaft cluster (RF 3, min.insync 2; three JVMs of 384 MB) and its data dir, for
    tests that kill and restart its nodes (``_devkafka.kill_node``/``restart_node``): each such test must
    leave every node running and back in the ISRs for the next user."""
    data_dir = tmp_path_factory.mktemp("cluster") / "cluster"
    ports = free_ports(6)
    info = _devkafka.start(data_dir, ports[:3], ports[3:], brokers=3, heap_mb=384)
    print(f"3-broker cluster ready in {info.seconds:.1f} s")
    for node in _started("three_brokers", data_dir, info):
        yield node, data_dir


def release_after_last_user(item: pytest.Item) -> None:
    """Stop a shared broker once ``item``, its last user in this session's collection, has finished."""
    last: dict[str, str] = item.session.stash.setdefault(_LAST_USER, {})
    if not last:
        for each in item.session.items:
            for name in SHARED:
                if name in getattr(each, "fixturenames", ()):
                    last[name] = each.nodeid
        last.setdefault("", "")  # computed, even when nothing uses a shared broker
    for name in SHARED:
        if last.get(name) == item.nodeid and name in _stops:
            _stops[name]()


_LAST_USER = pytest.StashKey[dict[str, str]]()
