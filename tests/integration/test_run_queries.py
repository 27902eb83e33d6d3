"""Run queries on the real broker: tags recorded and found, filters and cursor pages across partitions and
two processors, indexes that equal a fresh rebuild (after a restore from the changelog, after a SIGKILL
mid-load), queries that follow a rebalance, and a dead instance's partitions reported missing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import EngineProcess, ProcessorThread, WorkerThread, engine, history, settings

from orchestrator import App
from orchestrator._engine.fold import fold
from orchestrator._engine.queries.fanout import FanOutRunQuery
from orchestrator._engine.queries.index import RunIndexer, matches, order_key, parse_summary, summary_of
from orchestrator._engine.queries.model import RunFilter, RunPage, RunSummary
from orchestrator._engine.store import INDEX_PREFIX, SUMMARY_PREFIX, PartitionStore
from tests.integration.apps import query_app

QUERY_APP = "tests.integration.apps.query_app:app"
HTTP = {"http_port": 0, "advertised_host": "127.0.0.1"}


def _app(name: str, bootstrap: str) -> App:
    """``query_app``'s workflows and steps under this test's own app name (own topics and group)."""
    app = App(name, settings=settings(bootstrap))
    app.steps.update(query_app.app.steps)
    app.workflows.update(query_app.app.workflows)
    return app


async def _start(app: App, numbers: range, workflow: str = "order") -> list[Any]:
    async with app.client() as client:
        handles = [await client.start(workflow, n, run_id=f"{workflow}-{n:03d}") for n in numbers]
        outcomes = []
        for h in handles:
            try:
                outcomes.append(await h.result(timeout=120))
            except Exception as exc:  # failed runs are part of the data set
                outcomes.append(exc)
        return outcomes


def _expected(app: App) -> list[RunSummary]:
    """Every run as the history topic says it is (fold), newest first: what the indexes must answer."""
    runs = []
    for run_id, events in history(app).items():
        state = fold(events)
        assert state is not None
        runs.append(parse_summary(run_id, summary_of(state)))
    return sorted(runs, key=order_key)


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _complete(query: FanOutRunQuery) -> Callable[[], bool]:
    return lambda: not query.list(RunFilter(), limit=1).missing_partitions


def _all_pages(query: FanOutRunQuery, flt: RunFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = query.list(flt, cursor, limit)
        assert page.missing_partitions == []
        assert len(page.runs) <= limit
        ids += [r.run_id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


def _strip(run: RunSummary) -> RunSummary:
    return RunSummary(**{**run.to_json(), "partition": -1})


def _index_of(path: Path, partition: int) -> dict[bytes, bytes]:
    store = PartitionStore(path, partition)
    try:
        return dict(store.scan(INDEX_PREFIX)) | dict(store.scan(SUMMARY_PREFIX))
    finally:
        store.close()


def _assert_indexes_equal_a_rebuild(state_dir: Path) -> int:
    """Every run store under ``state_dir``: its indexes are exactly what a rebuild from its states gives."""
    stores = sorted(state_dir.rglob("p[0-9]*"))
    assert stores, f"no run stores under {state_dir}"
    for path in stores:
        partition = int(path.name[1:])
        written = _index_of(path, partition)
        store = PartitionStore(path, partition)
        try:
            store.rebuild_indexes(RunIndexer())
        finally:
            store.close()
        assert _index_of(path, partition) == written, f"{path}: indexes differ from a rebuild"
    return len(stores)


# -- tags, filters, pages ----------------------------------------------------------------------------------
def test_tags_filters_and_pages_across_partitions_and_two_processors(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = _app(unique_name, kafka_bootstrap)
    with engine(app, tmp_path / "state", processors=2, processor_config=HTTP) as procs:
        asyncio.run(_start(app, range(40)))
        asyncio.run(_start(app, range(40, 50), workflow="refund"))
        query = FanOutRunQuery(app.settings, app)
        _wait_for("both processors answering for every partition", _complete(query))
        instances, total = query.instances()
        assert total == 4 and len([i for i in instances if i.partitions]) == 2
        assert sorted(p for i in instances for p in i.partitions) == [0, 1, 2, 3]
        assert all(p.ready() for p in procs)

        expected = _expected(app)
        assert len(expected) == 50
        tagged = next(r for r in expected if r.run_id == "order-007")
        assert tagged.tags == {"customer": "c-1", "plan": "pro", "stage": "done"}  # merged, recorded
        failed_types = {r.error_type for r in expected if r.status == "failed"}
        assert len([r for r in expected if r.status == "failed"]) == 8 and len(failed_types) == 1
        middle = expected[25].created_ms
        filters = [
            RunFilter(),
            RunFilter(status="failed"),
            RunFilter(status="completed", workflow="order"),
            RunFilter(workflow="refund"),
            RunFilter(error_type=failed_types.pop()),
            RunFilter(tags={"customer": "c-1"}),
            RunFilter(tags={"customer": "c-2", "plan": "free"}),
            RunFilter(tags={"stage": "done"}, workflow="order"),
            RunFilter(since_ms=middle),
            RunFilter(until_ms=middle),
            RunFilter(run_id_prefix="order-01"),
            RunFilter(status="running"),
        ]
        for flt in filters:
            want = [r for r in expected if matches(flt, r)]
            page = query.list(flt, limit=500)
            assert page.missing_partitions == [] and page.next_cursor is None
            assert [_strip(r) for r in page.runs] == want, flt
            assert query.count(flt) == len(want), flt
            assert _all_pages(query, flt, 7) == [r.run_id for r in want], flt
        assert {r.partition for r in query.list(RunFilter(), limit=500).runs} == {0, 1, 2, 3}
    assert _assert_indexes_equal_a_rebuild(tmp_path / "state") >= 4


def test_index_is_rebuilt_by_a_restore_from_the_changelog(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A new instance with an empty state dir restores the stores from the changelog (which carries no
    index records): its indexes equal a rebuild and it answers the same queries."""
    app = _app(unique_name, kafka_bootstrap)
    with engine(app, tmp_path / "first", processor_config=HTTP):
        asyncio.run(_start(app, range(30)))
        query = FanOutRunQuery(app.settings, app)
        _wait_for("every partition answered", _complete(query))
        before = query.list(RunFilter(), limit=500).runs
    restored = ProcessorThread(app, tmp_path / "second", "p-restored", **HTTP)
    try:
        _wait_for("the restored instance answering", _complete(query), timeout=90)
        assert restored.processor.stats.restored_records > 0
        after = query.list(RunFilter(), limit=500).runs
        assert [_strip(r) for r in after] == [_strip(r) for r in before] == _expected(app)
        assert [r.run_id for r in query.list(RunFilter(tags={"customer": "c-0"})).runs] == [
            r.run_id for r in _expected(app) if r.tags.get("customer") == "c-0"
        ]
    finally:
        restored.stop()
    assert _assert_indexes_equal_a_rebuild(tmp_path / "second") == 4


# -- rebalances and dead instances -------------------------------------------------------------------------
@pytest.fixture
def hammer() -> Iterator[Callable[[FanOutRunQuery], list[BaseException]]]:
    """Queries in a loop from another thread (while the test moves partitions), errors collected."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def start(query: FanOutRunQuery) -> list[BaseException]:
        def loop() -> None:
            while not stop.is_set():
                try:
                    query.list(RunFilter(status="completed"), limit=20)
                except Exception as exc:  # reported by the test
                    errors.append(exc)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return errors

    yield start
    stop.set()
    for thread in threads:
        thread.join(30)


def test_queries_follow_a_rebalance(
    kafka_bootstrap: str,
    unique_name: str,
    tmp_path: Path,
    hammer: Callable[[FanOutRunQuery], list[BaseException]],
) -> None:
    """A second processor joins (partitions move to it, their stores close under concurrent queries),
    then leaves: every phase ends with every partition answered and the same runs listed."""
    app = _app(unique_name, kafka_bootstrap)
    query = FanOutRunQuery(app.settings, app)
    first = ProcessorThread(app, tmp_path / "state", "p0", **HTTP)
    worker = WorkerThread(app)
    second: ProcessorThread | None = None
    try:
        asyncio.run(_start(app, range(30)))
        _wait_for("the first instance answering", _complete(query))
        want = [r.run_id for r in _expected(app)]
        errors = hammer(query)
        second = ProcessorThread(app, tmp_path / "state", "p1", **HTTP)

        def split() -> bool:
            owners = [i.partitions for i in query.instances()[0] if i.partitions]
            return len(owners) == 2 and _complete(query)()

        _wait_for("partitions split between two instances", split, timeout=90)
        assert [r.run_id for r in query.list(RunFilter(), limit=500).runs] == want
        asyncio.run(_start(app, range(30, 40)))  # both process; queries see the new runs
        want = [r.run_id for r in _expected(app)]
        _wait_for(
            "new runs listed", lambda: [r.run_id for r in query.list(RunFilter(), limit=500).runs] == want
        )
        second.stop()
        second = None
        _wait_for("the first instance owning every partition again", _complete(query), timeout=90)
        assert [r.run_id for r in query.list(RunFilter(), limit=500).runs] == want
        assert errors == []
        assert first.thread.is_alive()  # no store closed under a query took the processor down
    finally:
        if second is not None:
            second.stop()
        worker.stop()
        first.stop()


def _query_env(name: str, bootstrap: str) -> dict[str, str]:
    return {
        "QUERY_APP_NAME": name,
        "ORCHESTRATOR_BOOTSTRAP_SERVERS": bootstrap,
        "ORCHESTRATOR_PARTITIONS": "4",
    }


def _cli(name: str, bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator runs list --app query_app`` as the user runs it, for the app named ``name``."""
    command = [sys.executable, "-m", "orchestrator", "runs", "list", "--app", QUERY_APP, *args]
    env = {**os.environ, **_query_env(name, bootstrap), "COLUMNS": "200"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def _processor(
    name: str, bootstrap: str, tmp: Path, instance: str, session_timeout_ms: int | None = None
) -> EngineProcess:
    env = _query_env(name, bootstrap)
    if session_timeout_ms is not None:
        env["ORCHESTRATOR_KAFKA__SESSION_TIMEOUT_MS"] = str(session_timeout_ms)
    return EngineProcess(
        "processor",
        QUERY_APP,
        env,
        "--instance-id",
        instance,
        "--state-dir",
        str(tmp / "state"),
        "--http-port",
        "0",
        "--advertised-host",
        "127.0.0.1",
        log=tmp / f"{instance}.log",
    )


SESSION_MS = 30_000


def test_a_dead_instance_shows_as_missing_partitions(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = _app(unique_name, kafka_bootstrap)
    query = FanOutRunQuery(app.settings, app)
    # The killed member keeps its partitions for a session timeout: 30 s (not the engine's 10 s), so that the
    # three CLI processes below, slow to start on a loaded machine, all ask within it.
    procs = [
        _processor(unique_name, kafka_bootstrap, tmp_path, f"q{i}", session_timeout_ms=SESSION_MS)
        for i in range(2)
    ]
    worker = WorkerThread(app)
    for p in procs:
        p.start()
    try:
        asyncio.run(_start(app, range(20)))

        def two_owners() -> bool:
            return len([i for i in query.instances()[0] if i.partitions]) == 2 and _complete(query)()

        _wait_for("two instances answering", two_owners, timeout=90)
        listed = _cli(
            unique_name, kafka_bootstrap, "--tag", "customer=c-1", "--status", "completed", "--json"
        )
        assert listed.returncode == 0, listed.stderr
        body = json.loads(listed.stdout)
        want = [
            r.run_id for r in _expected(app) if r.tags.get("customer") == "c-1" and r.status == "completed"
        ]
        assert [r["run_id"] for r in body["runs"]] == want and body["missing_partitions"] == []
        paged = _cli(unique_name, kafka_bootstrap, "--limit", "3")
        assert paged.returncode == 0 and "next page: --cursor" in paged.stdout, paged.stdout
        victim = procs[1]
        owned = next(i.partitions for i in query.instances()[0] if i.instance_id == "q1")
        victim.kill()
        killed = time.monotonic()
        # The group keeps the killed static member (and its partitions) until its session times out:
        page: RunPage = query.list(RunFilter(), limit=500)
        assert page.missing_partitions == sorted(owned)
        assert {r.partition for r in page.runs} == {0, 1, 2, 3} - set(owned)
        count, missing = query.count_page(RunFilter())
        assert missing == sorted(owned) and count == len(page.runs)
        incomplete = _cli(unique_name, kafka_bootstrap)
        assert incomplete.returncode == 5  # EXIT_INCOMPLETE: apart from 4, Kafka failures
        assert "no processor answered for partition(s)" in " ".join(incomplete.stdout.split())
        incomplete_json = _cli(unique_name, kafka_bootstrap, "--json")
        assert incomplete_json.returncode == 5
        assert time.monotonic() - killed < SESSION_MS / 1000, "too slow: the session timed out meanwhile"
        assert json.loads(incomplete_json.stdout)["missing_partitions"] == sorted(owned)  # JSON only
        assert "no processor answered for partition(s)" in " ".join(incomplete_json.stderr.split())
        # ... then the survivor takes them over and the answer is whole again.
        _wait_for("the survivor answering for every partition", _complete(query), timeout=90)
        assert [_strip(r) for r in query.list(RunFilter(), limit=500).runs] == _expected(app)
    finally:
        worker.stop()
        for p in procs:
            p.terminate()


def test_index_equals_a_rebuild_after_sigkill_mid_load(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A processor killed (SIGKILL) while committing batches: the store it left and the store after its
    restart both have indexes equal to a rebuild from their states, and the queries list every run."""
    app = _app(unique_name, kafka_bootstrap)
    query = FanOutRunQuery(app.settings, app)
    proc = _processor(unique_name, kafka_bootstrap, tmp_path, "k0")
    worker = WorkerThread(app)
    proc.start()
    try:

        async def load() -> list[Any]:
            task = asyncio.ensure_future(_start(app, range(300)))
            while not (_complete(query)() and query.count(RunFilter(status="completed")) >= 20):
                await asyncio.sleep(0.1)
            assert query.count(RunFilter(status="running")) > 0  # mid-load: runs still in flight
            proc.kill()
            _assert_indexes_equal_a_rebuild(tmp_path / "state")  # what the killed instance left
            proc.start()
            return await task

        outcomes = asyncio.run(load())
        assert len(outcomes) == 300
        _wait_for("the restarted instance answering", _complete(query), timeout=90)
        assert [_strip(r) for r in query.list(RunFilter(), limit=500).runs] == _expected(app)
        assert query.count(RunFilter(status="failed")) == 60
    finally:
        worker.stop()
        proc.terminate()
    _assert_indexes_equal_a_rebuild(tmp_path / "state")


def test_a_static_member_keeps_its_first_client_id_when_it_restarts(
    kafka_bootstrap: str, unique_name: str, create_topics: Any, admin: Any
) -> None:
    """Why endpoints come from the ``{app}.instances`` registry and not from the group (ADR 0016): the
    coordinator keeps the ``client.id`` of a static member's first join after the instance restarts."""
    from confluent_kafka import Consumer

    topic = f"{unique_name}.in"
    create_topics(topic, partitions=2)
    group = f"{unique_name}.group"

    def member(client_id: str) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": group,
                "group.instance.id": "instance-1",
                "client.id": client_id,
                "session.timeout.ms": 10_000,
                "partition.assignment.strategy": "range",
            }
        )
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.2)
        assert consumer.assignment()
        return consumer

    def described() -> list[tuple[str, str]]:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
        return [(m.client_id, m.member_id) for m in desc.members]

    first = member("first http=:1111")
    (before,) = described()
    first.close()  # a static member does not leave the group on close: a restart within the session
    second = member("second http=:2222")
    try:
        (after,) = described()
    finally:
        second.close()
    assert after[1] != before[1]  # a new member id for the restarted instance ...
    assert after[0] == "first http=:1111"  # ... under the client id of its first join
