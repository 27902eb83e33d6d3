"""What the development broker is told: ``server.properties``, log4j2 settings and JVM options.

Pure functions of a :class:`DataDir` layout and a :class:`BrokerConfig`, so they can be unit tested without
Java. The settings are the few a single-node KRaft broker needs to behave like a small production cluster
for our purposes: the internal topics default to replication 3 (transactions and consumer groups hang on
one broker without the overrides below), and the log cleaner's default 128 MB buffer does not fit the
small heap we give the broker on a developer laptop or a 2-core CI machine.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"  # not "localhost", which may resolve to ::1 where the broker is not listening


@dataclass(frozen=True)
class DataDir:
    """Where each file of one broker lives; one data dir is one broker (and one formatted cluster)."""

    root: Path

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j2_properties(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def kraft_dir(self) -> Path:
        """``log.dirs``: the metadata log and every topic's segments."""
        return self.root / "kraft"

    @property
    def meta_properties(self) -> Path:
        """Written by ``StorageTool format``; its presence means the dir is formatted."""
        return self.kraft_dir / "meta.properties"

    @property
    def tmp_dir(self) -> Path:
        """JVM temp dir: compression libraries unpack native code there, so it must allow exec."""
        return self.root / "tmp"

    @property
    def log_path(self) -> Path:
        return self.root / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.root / "broker.pid"

    @property
    def state_path(self) -> Path:
        return self.root / "broker.json"


@dataclass(frozen=True)
class BrokerConfig:
    """The knobs a caller may choose for a local broker."""

    port: int = 19092
    """Client (PLAINTEXT) listener; 19092 matches ``Settings.bootstrap_servers``' default."""
    controller_port: int = 19093
    """KRaft controller listener; fixed once the data dir is formatted."""
    node_id: int = 1
    heap_mb: int = 512
    """Enough for tests and demos, small enough for a 2-core CI machine with other work on it."""

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def controller_endpoint(self) -> str:
        return f"{LOOPBACK}:{self.controller_port}"


def new_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one, without paying for a JVM start.

    Kafka ids are 16 random bytes in unpadded URL-safe base64; Kafka avoids ids starting with ``-`` because
    they would read as a command line flag.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def server_properties(data_dir: DataDir, config: BrokerConfig) -> dict[str, str]:
    """Settings of a combined broker+controller on loopback, sized for one node."""
    listeners = f"PLAINTEXT://{config.bootstrap},CONTROLLER://{config.controller_endpoint}"
    single_node_internal_topics = {
        f"{prefix}.{suffix}": value
        for prefix in ("offsets.topic", "transaction.state.log", "share.coordinator.state.topic")
        for suffix, value in (("replication.factor", "1"), ("num.partitions", "1"))
    }
    return {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        "controller.quorum.bootstrap.servers": config.controller_endpoint,
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir.kraft_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        **single_node_internal_topics,
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "16777216",
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def render_properties(values: dict[str, str], header: str) -> str:
    """Java ``.properties`` text; backslashes are the format's escape character, so they are doubled."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={value.replace(chr(92), chr(92) * 2)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def log4j2_properties() -> str:
    """Broker logging to stdout (which the manager redirects to ``broker.log``), INFO and quieter."""
    return """# Generated by orchestrator._devkafka: broker logs go to stdout, redirected to broker.log.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


def jvm_options(data_dir: DataDir, config: BrokerConfig) -> list[str]:
    """JVM flags: a bounded heap, Kafka's usual G1 settings, our tmp dir and logging config."""
    return [
        f"-Xmx{config.heap_mb}m",
        f"-Xms{min(config.heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={data_dir.tmp_dir}",
        f"-Dlog4j2.configurationFile={data_dir.log4j2_properties}",
        f"-Dkafka.logs.dir={data_dir.root}",
    ]


def write_config_files(data_dir: DataDir, config: BrokerConfig) -> None:
    """(Re)write the generated files; they are derived data, so rewriting on every start is safe."""
    data_dir.root.mkdir(parents=True, exist_ok=True)
    data_dir.tmp_dir.mkdir(exist_ok=True)
    header = "Generated by orchestrator._devkafka on every start; edits are overwritten."
    data_dir.server_properties.write_text(
        render_properties(server_properties(data_dir, config), header), encoding="utf-8"
    )
    data_dir.log4j2_properties.write_text(log4j2_properties(), encoding="utf-8")


def read_properties(path: Path) -> dict[str, str]:
    """Minimal reader for the files we generate (``key=value`` lines, ``#`` comments)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().replace("\\\\", "\\")
    return values
