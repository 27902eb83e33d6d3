"""Asking every live processor for its partitions' runs, and merging the answers (ADR 0016).

Discovery, like Kafka Streams' interactive queries: the consumer group of the processors already knows
which instance is live and which inbox partitions it owns. ``AdminClient.describe_consumer_groups`` gives
each member's ``group.instance.id`` (``processor-<instance id>``) and its assigned partitions, so the
answer follows every rebalance as the group coordinator sees it; the instance's HTTP endpoint comes
from the ``{app}.instances`` registry (``registry``), which each processor rewrites when it starts.

Each instance is asked (in parallel) for the partitions the group assigns it; the pages are merged
newest first; a partition nobody answered for (its instance dead but still in the group until its
session times out, unreachable, or handing the partition over) is listed in ``missing_partitions``
rather than silently left out.
"""

from __future__ import annotations

import builtins
import http.client
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from orchestrator import topology
from orchestrator._engine import kafka
from orchestrator._engine.queries.index import decode_cursor, encode_cursor, order_key
from orchestrator._engine.queries.model import RunFilter, RunPage, RunSummary
from orchestrator._engine.queries.params import MAX_LIMIT, to_query
from orchestrator._engine.queries.registry import Endpoints
from orchestrator.app import App
from orchestrator.settings import Settings

MEMBER_PREFIX = "processor-"
"""A processor's ``group.instance.id`` is this plus its instance id (``loop.Processor._subscribe``)."""


@dataclass(frozen=True)
class Instance:
    """One live processor of the group: where it answers and which inbox partitions it owns."""

    instance_id: str
    url: str | None  # None: a member that serves no queries (started without --http-port)
    partitions: tuple[int, ...]


class FanOutRunQuery:
    """``RunQuery`` over the live processors of ``app``: ``FanOutRunQuery(settings, app).list(...)``."""

    def __init__(
        self, settings: Settings, app: App, timeout_s: float = 5.0, count_timeout_s: float = 60.0
    ) -> None:
        self.settings = settings
        self.group = f"{app.name}.processors"
        self.inbox = topology.inbox_topic(app.name)
        self.timeout_s = timeout_s
        self.count_timeout_s = count_timeout_s  # a count walks every matching index entry
        self.app_name = app.name
        self._admin: AdminClient | None = None
        self._endpoints: Endpoints | None = None

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = kafka.new_admin(kafka.base(self.settings))
        return self._admin

    # -- discovery ----------------------------------------------------------------------------------------
    def _describe(self) -> Any:
        """The processors' group; a coordinator that is moving or loading (right after a broker or group
        start) is asked again, twice, half a second apart."""
        admin = self._admin_client()
        for attempt in range(3):
            future = admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)[self.group]
            try:
                return future.result(timeout=self.timeout_s)
            except TimeoutError as exc:  # the future's own wait (builtin): a Kafka timeout to callers
                raise KafkaException(
                    KafkaError(
                        KafkaError._TIMED_OUT, f"describing group {self.group} took over {self.timeout_s}s"
                    )
                ) from exc
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if attempt == 2 or not isinstance(err, KafkaError) or not err.retriable():
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def instances(self) -> tuple[list[Instance], int]:
        """(the group's members, the inbox's partition count)."""
        admin = self._admin_client()
        group = self._describe()
        topic = admin.list_topics(self.inbox, timeout=self.timeout_s).topics.get(self.inbox)
        total = (
            len(topic.partitions) if topic is not None and topic.error is None else self.settings.partitions
        )
        if self._endpoints is None:
            self._endpoints = Endpoints(self.settings, self.app_name)
        urls = self._endpoints.refresh(self.timeout_s) if group.members else {}
        found = []
        for member in group.members:
            assigned = member.assignment.topic_partitions if member.assignment is not None else []
            partitions = tuple(sorted(tp.partition for tp in assigned if tp.topic == self.inbox))
            static_id = member.group_instance_id or ""
            instance_id = static_id.removeprefix(MEMBER_PREFIX) if static_id.startswith(MEMBER_PREFIX) else ""
            found.append(Instance(instance_id, urls.get(instance_id) if instance_id else None, partitions))
        return found, total

    def close(self) -> None:
        """Release the Kafka clients (call it while the cluster is up: a librdkafka client destroyed at
        interpreter exit after its brokers stopped was seen to hang the exit)."""
        if self._endpoints is not None:
            self._endpoints.close()
            self._endpoints = None
        self._admin = None

    # -- asking ---------------------------------------------------------------------------------------------
    def _get(self, url: str, timeout_s: float) -> dict[str, Any] | None:
        """One instance's JSON answer; None when it does not answer (its partitions are then missing)."""
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http only
                body: dict[str, Any] = json.loads(response.read())
                return body
        except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException):
            # HTTPException: an instance killed mid-answer (IncompleteRead, BadStatusLine)
            return None

    def _ask(self, path: str, query: Any) -> tuple[list[dict[str, Any]], set[int], int]:
        """(answers, partitions answered, partition count): every serving instance asked in parallel
        for its assigned partitions."""
        instances, total = self.instances()
        asked = [i for i in instances if i.url is not None and i.partitions]
        answers: list[dict[str, Any]] = []
        answered: set[int] = set()
        if asked:
            with ThreadPoolExecutor(max_workers=min(16, len(asked))) as pool:
                urls = [f"{i.url}{path}?{query(list(i.partitions))}" for i in asked]
                timeout = self.count_timeout_s if path.endswith("/count") else self.timeout_s
                for body in pool.map(lambda url: self._get(url, timeout), urls):
                    if body is not None:
                        answers.append(body)
                        answered.update(body.get("partitions", []))
        return answers, answered, total

    def list(self, flt: RunFilter, cursor: str | None = None, limit: int = 50) -> RunPage:
        """ValueError for a bad cursor or limit (checked here: a processor refusing them would otherwise
        look like one that did not answer)."""
        if cursor:
            decode_cursor(cursor)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit is 1..{MAX_LIMIT}, got {limit}")
        answers, answered, total = self._ask("/runs", lambda parts: to_query(flt, cursor, limit, parts))
        by_id: dict[str, RunSummary] = {}
        more = False
        for body in answers:
            more = more or bool(body.get("has_more"))
            for row in body.get("runs", []):
                run = RunSummary.from_json(row)
                by_id[run.run_id] = run  # a partition answered twice during a handover: one row
        runs = sorted(by_id.values(), key=order_key)
        if len(runs) > limit:
            runs, more = runs[:limit], True
        next_cursor = encode_cursor(runs[-1].created_ms, runs[-1].run_id) if more and runs else None
        missing = sorted(set(range(total)) - answered)
        return RunPage(runs, next_cursor, missing)

    def count_page(self, flt: RunFilter) -> tuple[int, builtins.list[int]]:
        """(runs matching ``flt`` in the partitions that answered, the partitions that did not)."""
        answers, answered, total = self._ask("/runs/count", lambda parts: to_query(flt, partitions=parts))
        return sum(int(b.get("count", 0)) for b in answers), sorted(set(range(total)) - answered)

    def count(self, flt: RunFilter) -> int:
        return self.count_page(flt)[0]
