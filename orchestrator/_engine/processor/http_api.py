"""Each processor answers run queries for the partitions it owns, over HTTP (ADR 0016).

Endpoints (JSON):
  ``GET /runs?workflow=&status=&error_type=&tag=k=v&since_ms=&until_ms=&run_id_prefix=&cursor=&limit=``
      ``{"runs": [RunSummary...], "partitions": [answered], "has_more": bool}``, newest first
  ``GET /runs/count?<same filter>``     ``{"count": n, "partitions": [answered]}``
  ``GET /healthz``                      200 while the process serves HTTP
  ``GET /ready``                        200 once the assigned partitions are restored and the instance is
                                        processing; 503 before (the Helm chart's readiness probe)
  ``partitions=1,3`` limits an answer to those partitions (the fan-out client asks each instance for the
  partitions the consumer group assigns it, so a partition being handed over is not answered twice).

Why a stdlib ``ThreadingHTTPServer`` in a thread: queries read RocksDB (thread-safe) and never touch the
processing loop's state or the batch in progress (``PartitionStore.reading`` sees committed data only),
so they need no coordination with the loop beyond ``reading``'s guard against a store closed by a
rebalance; a closed store's partition is left out of ``partitions`` (the client reports it missing).
No extra dependency for four GET endpoints.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orchestrator._engine.queries.index import (
    count_partition,
    decode_cursor,
    list_partition,
    order_key,
)
from orchestrator._engine.queries.model import RunSummary
from orchestrator._engine.queries.params import from_query
from orchestrator._engine.store import PartitionStore, StoreClosedError

log = logging.getLogger("orchestrator.processor.http")

StoresFn = Callable[[], dict[int, PartitionStore]]
ReadyFn = Callable[[], bool]


def answer_list(stores: dict[int, PartitionStore], params: dict[str, list[str]]) -> dict[str, Any]:
    """The /runs answer for ``stores`` (partition -> store); ValueError for a bad query."""
    flt, cursor, limit, only = from_query(params)
    after = decode_cursor(cursor) if cursor else None
    runs: list[RunSummary] = []
    answered: list[int] = []
    more = False
    for p, store in sorted(stores.items()):
        if only is not None and p not in only:
            continue
        try:
            got, has_more = list_partition(store, flt, after, limit)
        except StoreClosedError:
            continue  # moved to another instance while we read: reported missing by the client
        answered.append(p)
        runs += got
        more = more or has_more
    runs.sort(key=order_key)
    if len(runs) > limit:
        runs, more = runs[:limit], True
    return {"runs": [r.to_json() for r in runs], "partitions": answered, "has_more": more}


def answer_count(stores: dict[int, PartitionStore], params: dict[str, list[str]]) -> dict[str, Any]:
    flt, _, _, only = from_query({k: v for k, v in params.items() if k not in ("cursor", "limit")})
    total = 0
    answered: list[int] = []
    for p, store in sorted(stores.items()):
        if only is not None and p not in only:
            continue
        try:
            total += count_partition(store, flt)
        except StoreClosedError:
            continue
        answered.append(p)
    return {"count": total, "partitions": answered}


class _Handler(BaseHTTPRequestHandler):
    server: QueryServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path == "/healthz":
                self._send(200, {"status": "ok"})
            elif url.path == "/ready":
                ready = self.server.ready()
                self._send(200 if ready else 503, {"ready": ready})
            elif url.path == "/runs":
                self._send(200, answer_list(self.server.stores(), params))
            elif url.path == "/runs/count":
                self._send(200, answer_count(self.server.stores(), params))
            else:
                self._send(404, {"error": f"no such endpoint {url.path!r}"})
        except ValueError as exc:
            self._send(400, {"error": str(exc)})
        except Exception as exc:  # a query bug answers 500 (logged), it must not kill the thread silently
            log.exception("run query %s failed", self.path)
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class QueryServer(ThreadingHTTPServer):
    """The HTTP server of one processor; ``start`` serves from a daemon thread."""

    daemon_threads = True

    def __init__(self, host: str, port: int, stores: StoresFn, ready: ReadyFn) -> None:
        super().__init__((host, port), _Handler)
        self.stores = stores
        self.ready = ready
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="orchestrator-http", daemon=True)
        self._thread.start()
        log.info("run queries served on port %d", self.port)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
