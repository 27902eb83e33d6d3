"""The Faust integration on the real broker: a Faust app's agents start and signal runs, and read outcomes
and history as Faust records.

The Faust app runs in-process on the test's event loop (``App.start``/``App.stop``, no worker CLI), which
is also where the bridge's client lives: the same single-loop set-up a ``faust worker`` gives users.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Producer
from engine_support import engine, history, settings

from orchestrator import App, WorkflowContext
from orchestrator._engine.kafka import ensure_topics
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.records import RunOutcome as EngineOutcome
from orchestrator._engine.records import encode_outcome
from orchestrator.integrations.faust import FaustBridge, HistoryEvent, RunOutcome
from orchestrator.topology import outcomes_topic


@dataclass
class Order:
    order_id: str
    qty: int


@dataclass
class Receipt:
    order_id: str
    total: int
    paid_by: str


class OrderEvent(faust.Record, serializer="json"):
    order_id: str
    qty: int


class Payment(faust.Record, serializer="json"):
    order_id: str
    by: str


def _app(name: str, bootstrap: str) -> tuple[App, Any]:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def price(order: Order) -> int:
        return order.qty * 250

    @app.workflow
    async def checkout(ctx: WorkflowContext, order: Order) -> Receipt:
        total = await ctx.step(price, order)
        paid = await ctx.wait_for_event("paid")
        return Receipt(order.order_id, total, paid.payload["by"])

    return app, checkout


def _faust_app(name: str, bootstrap: str, tmp: Path) -> faust.App:
    return faust.App(
        name,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        datadir=str(tmp / "faust"),
        topic_partitions=2,
    )


def _produce(bootstrap: str, topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, json.dumps(value).encode(), key.encode())
    assert producer.flush(30) == 0


async def _until(check: Any, what: str, limit: float = 120.0) -> None:
    """Wait for ``check()`` (a bound, not a timing claim: the runs take well under a second each)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen within {limit} s"
        await asyncio.sleep(0.1)


async def test_faust_agents_start_and_signal_runs_and_see_outcomes_and_history(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, create_topics: Any
) -> None:
    app, checkout = _app(unique_name, kafka_bootstrap)
    orders_topic, payments_topic = f"{unique_name}.orders", f"{unique_name}.payments"
    create_topics(orders_topic, payments_topic, partitions=2)
    ensure_topics(app)  # the engine's topics exist before Faust subscribes to outcomes and history

    fapp = _faust_app(f"{unique_name}-faust", kafka_bootstrap, tmp_path)
    bridge = FaustBridge(fapp, app)
    started: list[str] = []
    ended: dict[str, RunOutcome] = {}
    facts: dict[str, list[HistoryEvent]] = {}

    @fapp.agent(fapp.topic(orders_topic, value_type=OrderEvent))
    async def start_checkouts(stream: Any) -> None:
        async for _order in stream:
            handle = await bridge.start(checkout, run_id_from="order_id")
            started.append(handle.run_id)

    @fapp.agent(fapp.topic(payments_topic, value_type=Payment))
    async def forward_payments(stream: Any) -> None:
        async for payment in stream:
            await bridge.signal(payment.order_id, "paid", {"by": payment.by})

    @fapp.agent(bridge.outcomes)
    async def watch_outcomes(stream: Any) -> None:
        async for run_id, outcome in stream.items():
            assert run_id == outcome.run_id
            if outcome.ended:
                ended[outcome.run_id] = outcome

    @fapp.agent(bridge.history)
    async def watch_history(stream: Any) -> None:
        async for fact in stream:
            facts.setdefault(fact.run_id, []).append(fact)

    ids = [f"o{i}" for i in range(5)]
    with engine(app, tmp_path / "state"):
        await fapp.start()
        try:
            # o0 twice: a redelivered or repeated domain event is one run (the run id is its order_id).
            orders = [(i, {"order_id": i, "qty": n + 1}) for n, i in enumerate(ids)]
            _produce(kafka_bootstrap, orders_topic, [*orders, orders[0]])
            await _until(lambda: len(started) == 6, "six starts")
            _produce(kafka_bootstrap, payments_topic, [(i, {"order_id": i, "by": f"card-{i}"}) for i in ids])
            await _until(lambda: set(ended) == set(ids), "an outcome for every run")
            await _until(
                lambda: all(any(f.kind == "RunCompleted" for f in facts.get(i, [])) for i in ids),
                "RunCompleted in every run's history",
            )
        finally:
            await fapp.stop()

    assert sorted(started) == sorted([*ids, "o0"])
    for n, run_id in enumerate(ids):
        outcome = ended[run_id]
        assert (outcome.workflow, outcome.status) == ("checkout", "completed")
        assert bridge.result(outcome) == Receipt(run_id, (n + 1) * 250, f"card-{run_id}")
        seen = facts[run_id]
        assert [f.seq for f in seen] == list(range(len(seen)))
        assert [f.event_id for f in seen] == [f"{run_id}/{f.seq}" for f in seen]
        kinds = [f.kind for f in seen]
        assert kinds[0] == "RunStarted" and kinds[-1] == "RunCompleted"
        assert "EventReceived" in kinds and "StepCompleted" in kinds
        assert json.loads(seen[0].body["input"]) == {"order_id": run_id, "qty": n + 1}
    assert sum(1 for e in history(app)["o0"] if e.kind == "RunStarted") == 1
    # The Faust app's shutdown closed the bridge's client; confirmed() opens another (closed below).
    assert await bridge.confirmed(ended["o0"])  # agrees with the committed run state
    assert not await bridge.confirmed(RunOutcome("o0", "checkout", "failed", 0))
    await bridge.client.close()


async def test_faust_agents_see_records_of_aborted_transactions(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Why the docs call an outcome seen through Faust a hint: Faust 0.15.3 reads read_uncommitted, so an
    outcome a processor wrote in a transaction it then aborted reaches agents (ADR 0010)."""
    app, _ = _app(unique_name, kafka_bootstrap)
    ensure_topics(app)
    topic = outcomes_topic(app.name)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"{unique_name}-tx",
            "compression.type": "lz4",  # as the processors write
        }
    )
    producer.init_transactions(30)
    for status, commit in (("failed", False), ("completed", True)):
        producer.begin_transaction()
        value = encode_outcome(EngineOutcome("r1", "checkout", status, 1))
        producer.produce(topic, value, b"r1", partition=partition_for("r1", app.settings.partitions))
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    fapp = _faust_app(f"{unique_name}-faust", kafka_bootstrap, tmp_path)
    bridge = FaustBridge(fapp, app)
    seen: list[str] = []

    @fapp.agent(bridge.outcomes)
    async def watch(stream: Any) -> None:
        async for outcome in stream:
            seen.append(outcome.status)

    await fapp.start()
    try:
        await _until(lambda: "completed" in seen, "the committed outcome")
    finally:
        await fapp.stop()
    assert seen == ["failed", "completed"]


async def test_a_record_that_is_not_the_engines_does_not_stop_the_agent(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Junk on the outcomes topic raises in the agent; Faust acks it, restarts the agent, and the next
    outcome still arrives (what docs/faust.md promises)."""
    app, _ = _app(unique_name, kafka_bootstrap)
    ensure_topics(app)
    topic = outcomes_topic(app.name)
    partition = partition_for("r1", app.settings.partitions)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"not an engine record", b"r1", partition=partition)
    producer.produce(
        topic, encode_outcome(EngineOutcome("r1", "checkout", "completed", 1)), b"r1", partition=partition
    )
    assert producer.flush(30) == 0

    fapp = _faust_app(f"{unique_name}-faust", kafka_bootstrap, tmp_path)
    bridge = FaustBridge(fapp, app)
    seen: list[str] = []

    @fapp.agent(bridge.outcomes)
    async def watch(stream: Any) -> None:
        async for outcome in stream:
            seen.append(outcome.status)

    await fapp.start()
    try:
        await _until(lambda: "completed" in seen, "the outcome after the junk record")
    finally:
        await fapp.stop()
    assert seen == ["completed"]
