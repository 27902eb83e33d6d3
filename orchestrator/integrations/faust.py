"""Faust integration: start and signal runs from Faust agents, react to run outcomes and history.

For teams whose domain events already flow through Faust agents (ADR 0014). Needs the ``faust`` extra
(``pip install kafka-orchestrator[faust]``); importing this module without faust-streaming raises
ImportError with that hint.

- `FaustBridge.start` starts a run from inside an agent. The run id comes from the event being processed
  (its key, a field of its value, or ``<topic>-<partition>-<offset>``), so a redelivered event (Faust
  agents are at-least-once) starts the same run again, which the engine turns into one run.
- `FaustBridge.outcomes` and `FaustBridge.history` are Faust topics over the engine's outcomes and history
  topics, whose values decode (Avro, Confluent wire format) into the Faust records `RunOutcome` and
  `HistoryEvent`.

The engine writes those topics in Kafka transactions, and Faust 0.15.3 consumes with
``read_uncommitted`` (even with ``processing_guarantee="exactly_once"``; measured in ADR 0014), so an
agent can also see records of aborted transactions: treat an outcome as a hint that is almost always
final, dedupe by run id (outcomes) or event id (history), and ask `FaustBridge.confirmed` (which reads
committed state) when acting on a phantom would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import faust
    from aiokafka.codec import has_lz4
    from faust.serializers.codecs import Codec
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "orchestrator.integrations.faust needs faust-streaming: pip install 'kafka-orchestrator[faust]'"
    ) from exc

from orchestrator import topology
from orchestrator._engine.events import decode_event, to_record
from orchestrator._engine.records import decode_outcome
from orchestrator._engine.state import COMPLETED, PARKED, TERMINAL
from orchestrator.app import App
from orchestrator.client import Client, RunHandle
from orchestrator.errors import OrchestratorError, RunFailedError
from orchestrator.triggers import KeyExpr, extract

__all__ = [
    "ENDED",
    "EVENT_VALUE",
    "HISTORY_CODEC",
    "OUTCOME_CODEC",
    "FaustBridge",
    "HistoryEvent",
    "RunOutcome",
    "run_id_of",
]

ENDED = frozenset({*TERMINAL, PARKED})
"""Outcome statuses that say how a run ended (or stopped, for parked); the rest acknowledge starts."""


class RunOutcome(faust.Record):
    """A record of the engine's outcomes topic: how a run ended, or an idempotent start's answer.

    ``status`` is completed, failed, cancelled or parked for an end (`ended` is true); accepted or
    duplicate when it acknowledges an idempotent start. ``result`` is the workflow's return value as
    the app's payload converter wrote it: `FaustBridge.result` decodes it.
    """

    run_id: str
    workflow: str
    status: str
    timestamp_ms: int
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class HistoryEvent(faust.Record):
    """A record of the engine's history topic: one accepted fact about one run, ``seq`` 0, 1, ... per run.

    ``kind`` names the fact (RunStarted, StepScheduled, StepCompleted, RunCompleted, ...; the branches of
    ``schemas/event-v2.avsc``) and ``body`` holds its fields, payloads as the converter's bytes.
    ``event_id`` is ``<run_id>/<seq>``: deterministic, so a consumer can dedupe.
    """

    event_id: str
    run_id: str
    workflow: str
    workflow_version: str
    seq: int
    timestamp_ms: int
    kind: str
    body: dict[str, Any]


class _EngineCodec(Codec):
    """Reads one of the engine's Avro record types (Confluent wire format) into a plain dict for Faust.

    Why a codec and not a ``faust.Record`` serializer name: the bytes carry a schema id, not JSON, and
    records written with older schema versions are resolved to the current one by the engine's reader.
    Writing is refused: only processors write these topics.
    """

    topic = ""

    def _dumps(self, s: Any) -> bytes:
        raise OrchestratorError(
            f"the engine's {self.topic} topic is written only by processors; start or signal runs with "
            "FaustBridge.start / FaustBridge.signal"
        )


class _OutcomeCodec(_EngineCodec):
    topic = "outcomes"

    def _loads(self, s: bytes) -> Any:
        o = decode_outcome(s)
        return {
            "run_id": o.run_id,
            "workflow": o.workflow,
            "status": o.status,
            "timestamp_ms": o.timestamp_ms,
            "result": o.result,
            "error_type": o.error_type,
            "error_message": o.error_message,
        }


class _HistoryCodec(_EngineCodec):
    topic = "history"

    def _loads(self, s: bytes) -> Any:
        e = decode_event(s)
        return {
            "event_id": e.event_id,
            "run_id": e.run_id,
            "workflow": e.workflow,
            "workflow_version": e.workflow_version,
            "seq": e.seq,
            "timestamp_ms": e.timestamp_ms,
            "kind": type(e.body).__name__,
            "body": to_record(e.body),
        }


OUTCOME_CODEC = _OutcomeCodec()
"""Value codec of the outcomes topic: engine Avro -> `RunOutcome` fields."""
HISTORY_CODEC = _HistoryCodec()
"""Value codec of the history topic: engine Avro -> `HistoryEvent` fields."""


def run_id_of(event: Any, run_id_from: KeyExpr | None = None) -> str:
    """The run id for a Faust event (frozen format, the same rules as ``Trigger``).

    With ``run_id_from`` (a field path such as ``"order.id"``, or a function of the value): that value.
    Otherwise the event's key (bytes as UTF-8), and for a keyless event ``<topic>-<partition>-<offset>``,
    so a redelivered record maps to the same run.
    """
    if run_id_from is not None:
        return str(extract(event.value, run_id_from))
    key = event.key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode()
    if key is not None:
        return str(key)
    message = event.message
    return f"{message.topic}-{message.partition}-{message.offset}"


class _EventValue:
    def __repr__(self) -> str:
        return "<the event's value>"


EVENT_VALUE: Any = _EventValue()
"""Default ``input`` of `FaustBridge.start`: the value of the event being processed."""


def _plain(value: Any) -> Any:
    """A Faust record as its fields (nested records too), so the JSON converter can write it and the
    workflow can annotate a dataclass or pydantic model with the same fields."""
    if isinstance(value, faust.Record):
        return {k: _plain(v) for k, v in value.asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class FaustBridge:
    """Connects one Faust app to one orchestrator app: starts and signals runs, declares the engine's topics.

    It holds one `orchestrator.Client` (created on first use, closed when the Faust app shuts down). The
    client's Kafka I/O runs on its own threads and hands results to whatever asyncio loop awaits them, so
    calls from agents run on the Faust worker's own loop: no second event loop.
    """

    def __init__(self, faust_app: faust.App, app: App) -> None:
        if not has_lz4():
            # Faust's fetcher would crash on the first engine record and stop every agent (ADR 0014).
            raise OrchestratorError(
                "the engine's topics are lz4-compressed and aiokafka (Faust's driver) cannot read lz4 "
                "without cramjam: pip install 'kafka-orchestrator[faust]'"
            )
        self.faust_app = faust_app
        self.app = app
        self._client: Client | None = None
        self._outcomes: Any = None
        self._history: Any = None
        faust_app.on_before_shutdown.connect(self._on_shutdown, weak=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.app.client()
        return self._client

    async def start(
        self,
        workflow: Any,
        input: Any = EVENT_VALUE,
        *,
        run_id: str | None = None,
        run_id_from: KeyExpr | None = None,
    ) -> RunHandle[Any]:
        """Start a run of ``workflow`` for the event the calling agent is processing.

        ``input`` defaults to the event's value (a Faust record is passed as its fields). The run id is
        ``run_id`` if given, else `run_id_of` the current event: the same event twice is one run.
        Outside an agent (no current event) ``run_id`` is required.
        """
        event = faust.current_event()
        if run_id is None:
            if event is None:
                raise OrchestratorError(
                    "FaustBridge.start outside an agent's event: pass run_id (or call it while iterating "
                    "a stream)"
                )
            run_id = run_id_of(event, run_id_from)
        if input is EVENT_VALUE:
            if event is None:
                raise OrchestratorError("FaustBridge.start outside an agent's event: pass input")
            input = event.value
        return await self.client.start(workflow, _plain(input), run_id=run_id)

    async def signal(self, run_id: str, name: str, payload: Any = None, *, key: str = "") -> None:
        """Send event ``name`` to one run (taken by its ``ctx.wait_for_event(name)``)."""
        await self.client.signal(run_id, name, _plain(payload), key=key)

    @property
    def outcomes(self) -> Any:
        """The engine's outcomes topic as a Faust topic of `RunOutcome` (keys: run ids as str)."""
        if self._outcomes is None:
            self._outcomes = self._topic(topology.outcomes_topic(self.app.name), RunOutcome, OUTCOME_CODEC)
        return self._outcomes

    @property
    def history(self) -> Any:
        """The engine's history topic as a Faust topic of `HistoryEvent` (keys: run ids as str)."""
        if self._history is None:
            self._history = self._topic(topology.history_topic(self.app.name), HistoryEvent, HISTORY_CODEC)
        return self._history

    def _topic(self, name: str, record: type[faust.Record], codec: Codec) -> Any:
        # Not internal: Faust must neither create nor reconfigure the engine's topics.
        return self.faust_app.topic(
            name,
            key_type=str,
            value_type=record,
            key_serializer="raw",
            value_serializer=codec,
            partitions=self.app.settings.partitions,
            internal=False,
        )

    def result(self, outcome: RunOutcome) -> Any:
        """The run's return value decoded as the workflow's return annotation; RunFailedError otherwise."""
        if outcome.status != COMPLETED:
            raise RunFailedError(outcome.run_id, outcome.status, outcome.error_type, outcome.error_message)
        definition = self.app.workflows.get(outcome.workflow)
        hint = definition.return_hint if definition is not None else None
        return self.app.data.decode(outcome.result or b"null", hint)

    async def confirmed(self, outcome: RunOutcome) -> bool:
        """True when the run's committed state agrees with ``outcome`` (it is not from an aborted
        transaction). Reads the run's changelog partition: use it when acting on a phantom would be wrong,
        not for every record."""
        desc = await self.client.describe(outcome.run_id)
        return desc is not None and desc.status == outcome.status

    async def _on_shutdown(self, *_args: Any, **_kwargs: Any) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
