"""The processor's query server (stdlib HTTP over real partition stores), the query parameters, the
fan-out merge (instances faked: the real discovery is in tests/integration/test_run_queries.py) and the
CLI's time options."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from orchestrator import App
from orchestrator._engine import state as st
from orchestrator._engine.processor.http_api import QueryServer
from orchestrator._engine.queries.fanout import FanOutRunQuery, Instance
from orchestrator._engine.queries.index import RunIndexer, summary_of
from orchestrator._engine.queries.model import RunFilter
from orchestrator._engine.queries.params import from_query, to_query
from orchestrator._engine.store import PartitionStore, run_key
from orchestrator.cli._runs_query import time_ms
from orchestrator.settings import Settings

TAGS = {"customer": "c-42", "plan": "pro"}


def _fill(store: PartitionStore, count: int, offset: int) -> None:
    for i in range(count):
        n = offset + i
        status = st.FAILED if n % 3 == 0 else st.COMPLETED
        state = st.RunState(
            f"r-{n:03d}", "wf", status, b"null", 1_000 + n * 10, 2_000 + n, tags=TAGS if n % 2 else {}
        )
        store.put(run_key(state.run_id), st.encode_state(state), summary_of(state))
    store.commit(1, 1)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[QueryServer]]:
    """Two servers, one with partitions 0 and 1, one with partition 2 (as two processors would be)."""
    stores = [PartitionStore(tmp_path / f"p{p}", p, RunIndexer()) for p in range(3)]
    for p, store in enumerate(stores):
        _fill(store, 20, p * 100)
    ready = {"now": True}
    a = QueryServer("127.0.0.1", 0, lambda: {0: stores[0], 1: stores[1]}, lambda: ready["now"])
    b = QueryServer("127.0.0.1", 0, lambda: {2: stores[2]}, lambda: False)
    a.start()
    b.start()
    yield [a, b]
    a.stop()
    b.stop()
    for store in stores:
        store.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed when the block ends: connections are refused


def _get(server: QueryServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_ready_and_errors(servers: list[QueryServer]) -> None:
    a, b = servers
    assert _get(a, "/healthz") == (200, {"status": "ok"})
    assert _get(a, "/ready") == (200, {"ready": True})
    assert _get(b, "/ready") == (503, {"ready": False})
    assert _get(a, "/nope")[0] == 404
    status, body = _get(a, "/runs?colour=red")
    assert status == 400 and "colour" in body["error"]
    assert _get(a, "/runs?limit=0")[0] == 400
    assert _get(a, "/runs?tag=novalue")[0] == 400
    assert _get(a, "/runs?cursor=zzz")[0] == 400


def test_runs_and_count_of_one_server(servers: list[QueryServer]) -> None:
    a, _ = servers
    status, body = _get(a, "/runs?limit=5&status=failed")
    assert status == 200 and body["partitions"] == [0, 1] and body["has_more"]
    created = [r["created_ms"] for r in body["runs"]]
    assert created == sorted(created, reverse=True) and len(created) == 5
    assert {r["partition"] for r in body["runs"]} == {1}  # partition 1's runs are the newest
    assert _get(a, "/runs/count?tag=customer=c-42&tag=plan=pro") == (200, {"count": 20, "partitions": [0, 1]})
    assert _get(a, "/runs/count?partitions=1")[1] == {"count": 20, "partitions": [1]}


def test_fan_out_merges_pages_and_reports_missing(servers: list[QueryServer], monkeypatch: Any) -> None:
    a, b = servers
    app = App("fanout-unit", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=4))
    query = FanOutRunQuery(app.settings, app)
    instances = [
        Instance("a", f"http://127.0.0.1:{a.port}", (0, 1)),
        Instance("b", f"http://127.0.0.1:{b.port}", (2,)),
        Instance("dead", f"http://127.0.0.1:{_closed_port()}", (3,)),
    ]
    monkeypatch.setattr(query, "instances", lambda: (instances, 4))
    seen: list[str] = []
    cursor = None
    while True:
        page = query.list(RunFilter(status="completed"), cursor, 6)
        assert page.missing_partitions == [3]
        seen += [r.run_id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 13 + 14 + 13  # the completed runs of the answering partitions
    assert seen[:3] == ["r-218", "r-217", "r-215"]
    assert query.count_page(RunFilter(tags={"plan": "pro"})) == (30, [3])
    with pytest.raises(ValueError, match="cursor"):
        query.list(RunFilter(), "garbage!", 10)
    with pytest.raises(ValueError, match="limit"):
        query.list(RunFilter(), None, 5000)


def test_query_parameters_round_trip() -> None:
    flt = RunFilter("wf", "failed", "Boom", {"customer": "c=42", "plan": "pro"}, 5, 10, "order-")
    from urllib.parse import parse_qs

    parsed = from_query(parse_qs(to_query(flt, "abc", 7, [1, 3])))
    assert parsed == (flt, "abc", 7, [1, 3])


def test_cli_times() -> None:
    now = 10_000_000
    assert time_ms("1h", now) == now - 3_600_000
    assert time_ms("1234", now) == 1234
    assert time_ms("1970-01-01T00:00:01", now) == 1000
    assert time_ms("1970-01-01T01:00:01+01:00", now) == 1000
    with pytest.raises(ValueError, match="neither"):
        time_ms("yesterday", now)


@pytest.fixture
def cut_off_server() -> Iterator[int]:
    """A server that promises a 1,000-byte JSON body, sends part of it and closes: an instance killed
    mid-response (http.client.IncompleteRead on the reader's side)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 1000\r\n\r\n{"runs": ['
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(5)


def test_an_instance_cut_off_mid_answer_reports_its_partitions_missing(
    servers: list[QueryServer], cut_off_server: int, monkeypatch: Any
) -> None:
    a, _ = servers
    app = App("fanout-cut", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=2))
    query = FanOutRunQuery(app.settings, app)
    instances = [
        Instance("a", f"http://127.0.0.1:{a.port}", (0,)),
        Instance("cut", f"http://127.0.0.1:{cut_off_server}", (1,)),
    ]
    monkeypatch.setattr(query, "instances", lambda: (instances, 2))
    page = query.list(RunFilter(), None, 5)
    assert page.missing_partitions == [1] and len(page.runs) == 5
    assert query.count_page(RunFilter())[1] == [1]


def test_a_group_description_that_times_out_is_a_kafka_timeout(monkeypatch: Any) -> None:
    """``future.result(timeout=...)`` raises the builtin TimeoutError; the CLI's root handler knows Kafka
    errors (exit 4, error document), so it becomes one."""
    app = App("fanout-timeout", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=2))
    query = FanOutRunQuery(app.settings, app, timeout_s=0.01)

    class SlowFuture:
        def result(self, timeout: float | None = None) -> Any:
            raise TimeoutError

    class Admin:
        def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Any]:
            return {g: SlowFuture() for g in groups}

    monkeypatch.setattr(query, "_admin_client", Admin)
    with pytest.raises(KafkaException) as caught:
        query.instances()
    assert caught.value.args[0].code() == KafkaError._TIMED_OUT
