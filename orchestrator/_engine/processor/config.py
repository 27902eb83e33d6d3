"""What one processor instance is told (its config), what it counts (its stats) and the topics it uses."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import topology
from orchestrator.app import App


@dataclass(frozen=True)
class ProcessorConfig:
    """Knobs of one processor instance.

    Attributes:
        instance_id: stable name of this instance; its transactional id derives from it, so a restarted
            instance fences its predecessor. Two live instances must have different ids.
        state_dir: where this instance keeps its partition stores.
        max_batch: most inbox records per transaction (the throughput lever).
        batch_linger_ms: once a record is in, wait up to this long for more before the transaction (the
            latency/throughput knob: each transaction costs the broker and this loop a fixed amount, so
            fewer, larger ones leave more CPU for runs, at up to this much added latency per step).
        max_wait_ms: longest idle wait before checking timers again (bounds timer lateness).
        cache_size: live workflow instances, and decoded run states, kept in memory.
        timer_batch: most timers fired per transaction.
        http_port: serve run queries, /healthz and /ready on this port (``http_api``); None: no server,
            0: a port the OS picks (tests). The endpoint is published to the ``{app}.instances`` topic
            for query clients (ADR 0016).
        http_host: the address the server binds.
        advertised_host: the host query clients should connect to; None: the address of the interface
            this host reaches the first bootstrap server through (set it behind NAT or proxies).
        standby_replicas: warm copies this instance helps keep of each partition it does not own (Kafka
            Streams' ``num.standby.replicas``): each partition gets this many standbys among the other
            instances, so the one that takes it over restores only the changelog's tail (ADR 0024).
            Costs disk, a consumer tailing the changelogs, and broker reads. 0: none.
        early_dispatch: send step commands to the workers once the batch is handled, through an
            idempotent producer outside the transaction, each acknowledged before the transaction that
            records it commits (ADR 0025): a worker starts a step while the transaction commits instead of
            after. Off by default: on the shared 2-core bench machine it did not lower latency at 1 or 32
            callers and cost CPU per run at 256 (BENCHMARKS.md, issue 15).
        state_cleanup_delay_s: with standby replicas, a partition's store directory that is neither active
            nor a standby here for this long is deleted (Kafka Streams' ``state.cleanup.delay.ms``); keep it
            well below the changelogs' ``delete.retention.ms`` (24 h by default), after which a kept
            directory could miss deletes (ADR 0024).
    """

    instance_id: str = field(default_factory=socket.gethostname)
    state_dir: Path | None = None
    max_batch: int = 500
    batch_linger_ms: int = 0
    max_wait_ms: int = 100
    cache_size: int = 2000
    timer_batch: int = 500
    http_port: int | None = None
    http_host: str = "0.0.0.0"  # a server in a pod must listen on the pod's address
    advertised_host: str | None = None
    standby_replicas: int = 0
    early_dispatch: bool = False
    state_cleanup_delay_s: float = 600.0
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    producer_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessorStats:
    events: int = 0
    timers: int = 0
    transactions: int = 0
    dead_letters: int = 0
    ignored: int = 0
    aborts: int = 0
    restored_records: int = 0
    local_steps: int = 0


@dataclass(frozen=True)
class ProcessorTopics:
    """The engine topics of one app, named once: every part of the processor reads or writes some."""

    inbox: str
    history: str
    changelog: str
    outcomes: str
    dlq: str
    keyed: str
    keyed_changelog: str
    sources: tuple[str, ...]  # the users' topics that triggers and event sources read

    @classmethod
    def of(cls, app: App) -> ProcessorTopics:
        return cls(
            inbox=topology.inbox_topic(app.name),
            history=topology.history_topic(app.name),
            changelog=topology.changelog_topic(app.name),
            outcomes=topology.outcomes_topic(app.name),
            dlq=topology.dlq_topic(app.name),
            keyed=topology.keyed_topic(app.name),
            keyed_changelog=topology.keyed_changelog_topic(app.name),
            sources=tuple(sorted(app.source_topics)),
        )
