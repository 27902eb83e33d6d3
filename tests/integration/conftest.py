"""The real broker for ``tests/integration``, and its marker (``-m "not integration"`` skips them all).

Unit tests (``tests/unit``) need no Java and no Kafka. Integration tests get one real broker per session:
the one named by ``ORCHESTRATOR_TEST_BOOTSTRAP`` (``./dev test`` starts it), or else a fresh broker in a
temp dir on free ports, stopped at session end (shared by the pytest-xdist workers of a run). Tests share
the broker but never a name: each takes ``unique_name`` for its topics, groups and apps, and free ports and
``tmp_path`` for everything else, since another test runs beside it (ADR 0026). A test that kills a broker
takes ``private_broker``, a broker of its own; the secured broker and the 3-broker cluster are shared by the
files that use them (``shared_brokers.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from engine_support import PrivateBroker, free_ports
from scheduling import FIXTURE_GROUPS, GROUP_OF
from shared_brokers import release_after_last_user, secured_broker, three_brokers

__all__ = ["secured_broker", "three_brokers"]  # shared fixtures, found by pytest in this namespace

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Conftest hooks see the whole session's items, so only tests below this folder are marked.
    root = _HERE.parent.parent
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
        for fixture, group in FIXTURE_GROUPS.items():
            path = item.path.resolve().relative_to(root).as_posix()
            if fixture in getattr(item, "fixturenames", ()) and GROUP_OF.get(path) != group:
                raise pytest.UsageError(
                    f"{item.nodeid} uses {fixture}: list {path} in group {group!r} of tests/scheduling.py, "
                    "so that one worker runs every user of that broker"
                )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    release_after_last_user(item)


BOOTSTRAP_ENV = "ORCHESTRATOR_TEST_BOOTSTRAP"
KAFKA_DIR_ENV = "ORCHESTRATOR_TEST_KAFKA_DIR"
"""Data dir of the broker behind ``ORCHESTRATOR_TEST_BOOTSTRAP``, when the test runner started it."""

QUIET_LOGGER = logging.getLogger("tests.librdkafka")
"""Give clients ``{"logger": QUIET_LOGGER}`` to keep expected librdkafka errors out of the output."""
QUIET_LOGGER.addHandler(logging.NullHandler())
QUIET_LOGGER.propagate = False


def _warm_up_transactions(bootstrap: str) -> None:
    """Create the transaction coordinator's topic once, so the first transactional test is not slow."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"warmup-{uuid.uuid4().hex}",
            "logger": QUIET_LOGGER,
        }
    )
    producer.init_transactions(60)
    producer.flush(10)


@pytest.fixture(scope="session")
def kafka_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path | None]]:
    """(bootstrap, data dir or None) of the session's broker; started here unless the env names one.

    Under pytest-xdist every worker runs this fixture; they share one broker, as they do the one ``./dev
    test`` names (ADR 0026): the first worker to need it starts it, the last one to finish stops it.
    """
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        external_dir = os.environ.get(KAFKA_DIR_ENV)
        _warm_up_transactions(external)
        yield external, Path(external_dir) if external_dir else None
        return
    from orchestrator import _devkafka

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The parent of a worker's basetemp is the run's, shared by its workers.
        with _shared_broker(tmp_path_factory.getbasetemp().parent) as (bootstrap, data_dir):
            yield bootstrap, data_dir
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    port, controller_port = free_ports(2)
    info = _devkafka.start(data_dir, port, controller_port)
    try:
        _warm_up_transactions(info.bootstrap)
        yield info.bootstrap, data_dir
    finally:
        _devkafka.stop(data_dir)


@contextmanager
def _shared_broker(run_dir: Path) -> Iterator[tuple[str, Path]]:
    """One broker for every xdist worker of this run, counted in ``run_dir/kafka.json`` under a file lock.

    A worker that comes after the others have stopped it starts it again, on the same data dir.
    """
    from filelock import FileLock

    from orchestrator import _devkafka

    data_dir, users = run_dir / "kafka", run_dir / "kafka.json"
    with FileLock(run_dir / "kafka.lock"):
        state = json.loads(users.read_text()) if users.exists() else {"users": 0}
        if state["users"] == 0:
            ports = state.get("ports") or free_ports(2)
            info = _devkafka.start(data_dir, ports[0], ports[1])
            _warm_up_transactions(info.bootstrap)
            state = {"users": 0, "ports": ports, "bootstrap": info.bootstrap}
        state["users"] += 1
        users.write_text(json.dumps(state))
    try:
        yield state["bootstrap"], data_dir
    finally:
        with FileLock(run_dir / "kafka.lock"):
            state = json.loads(users.read_text())
            state["users"] -= 1
            users.write_text(json.dumps(state))
            if state["users"] == 0:
                _devkafka.stop(data_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_session: tuple[str, Path | None]) -> str:
    """Bootstrap servers of a real broker for this test session."""
    return kafka_session[0]


@pytest.fixture(scope="session")
def kafka_data_dir(kafka_session: tuple[str, Path | None]) -> Path:
    """Data dir of the session broker if it is a ``_devkafka`` broker we know; skips the test otherwise."""
    if kafka_session[1] is None:
        pytest.skip(f"the broker came from {BOOTSTRAP_ENV} without {KAFKA_DIR_ENV}")
    return kafka_session[1]


@pytest.fixture
def unique_name() -> str:
    """A fresh name for this test's topics, groups, transactional ids and apps (valid everywhere)."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient on the session broker."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka_bootstrap, "logger": QUIET_LOGGER}
    return AdminClient(conf)


CreateTopics = Callable[..., list[str]]


@pytest.fixture
def create_topics(admin: AdminClient) -> CreateTopics:
    """``create_topics(*names, partitions=1, config=None)``: create topics and wait until they are usable.

    The create call returns once the controller accepted the topics; the broker's metadata (what clients
    see) follows a moment later, and a consumer subscribing in between gets "unknown topic" errors.
    """

    def create(*names: str, partitions: int = 1, config: dict[str, str] | None = None) -> list[str]:
        new = [
            NewTopic(n, num_partitions=partitions, replication_factor=1, config=config or {}) for n in names
        ]
        for future in admin.create_topics(new, operation_timeout=30).values():
            future.result(30)
        deadline = time.monotonic() + 30
        while True:
            topics = admin.list_topics(timeout=10).topics
            if all(n in topics and len(topics[n].partitions) == partitions for n in names):
                return list(names)
            assert time.monotonic() < deadline, f"topics {names} not visible after 30 s"
            time.sleep(0.05)

    return create


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A started broker of this test's own (for tests that kill it); stopped at the end."""
    broker = PrivateBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
