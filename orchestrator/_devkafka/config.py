"""What the development broker is told: ``server.properties``, log4j2 settings and JVM options.

Pure functions of a :class:`DataDir` layout and a :class:`BrokerConfig`, so they can be unit tested without
Java. The settings are the few a KRaft node needs to behave like a small production cluster for our
purposes: on a single node the internal topics must drop from their default replication 3 (transactions and
consumer groups hang without it); a node of a several-broker cluster gets a static quorum and replication 3
with min ISR 2, so losing one broker is survivable; and the log cleaner's default 128 MB buffer does not fit
the small heap we give each broker on a developer laptop or a 2-core CI machine.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass, field
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
class Voter:
    """One controller of a static KRaft quorum (``controller.quorum.voters``)."""

    node_id: int
    controller_port: int

    def __str__(self) -> str:
        return f"{self.node_id}@{LOOPBACK}:{self.controller_port}"


@dataclass(frozen=True)
class TlsSettings:
    """What a secured node is told about its TLS files and SASL identity (see ``security.py``).

    ``repr`` leaves the passwords out, so a config printed in a log or a test failure leaks nothing.
    """

    keystore: Path
    """PKCS#12 file with the broker's key and certificate."""
    truststore: Path
    """PEM file with the CA that signed every node's certificate (clients trust the same file)."""
    keystore_password: str = field(repr=False)
    broker_user: str
    broker_password: str = field(repr=False)
    super_users: tuple[str, ...]
    """Principals the StandardAuthorizer lets do anything, e.g. ``User:orchestrator``."""


@dataclass(frozen=True)
class BrokerConfig:
    """The knobs a caller may choose for a local broker (one node of a cluster)."""

    port: int = 19092
    """Client (PLAINTEXT) listener; 19092 matches ``Settings.bootstrap_servers``' default."""
    controller_port: int = 19093
    """KRaft controller listener; fixed once the data dir is formatted."""
    node_id: int = 1
    heap_mb: int = 512
    """Enough for tests and demos, small enough for a 2-core CI machine with other work on it."""
    voters: tuple[Voter, ...] = ()
    """Every controller of a several-broker cluster; empty for one node formatted ``--standalone``."""
    tls: TlsSettings | None = None
    """When set, clients and brokers speak SASL_SSL (SCRAM-SHA-512) and an authorizer is on."""

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def client_listener(self) -> str:
        """Listener name (and security protocol) clients and the other brokers connect to."""
        return "PLAINTEXT" if self.tls is None else "SASL_SSL"

    @property
    def cluster_size(self) -> int:
        return max(1, len(self.voters))

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
    """Settings of a combined broker+controller on loopback: one node alone, or one of a cluster."""
    listeners = f"{config.client_listener}://{config.bootstrap},CONTROLLER://{config.controller_endpoint}"
    return {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        **_quorum(config),
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": config.client_listener,
        "log.dirs": str(data_dir.kraft_dir),
        "num.partitions": "1",
        **replication_settings(config.cluster_size),
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "16777216",
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "4",
        **_security(config),
    }


def _quorum(config: BrokerConfig) -> dict[str, str]:
    """A static voter set for a cluster (each node formatted alike); a dynamic one-voter quorum otherwise."""
    if not config.voters:
        return {"controller.quorum.bootstrap.servers": config.controller_endpoint}
    return {
        "controller.quorum.voters": ",".join(str(voter) for voter in config.voters),
        # The default (9 s) lets a SIGKILLed broker keep its partitions' leadership that long; failover
        # tests and a developer watching them would wait for it every time.
        "broker.session.timeout.ms": "6000",
    }


def replication_settings(cluster_size: int) -> dict[str, str]:
    """Replication factor 3 and min ISR 2 where there are 3 brokers, for new and internal topics alike.

    One broker needs every default lowered to 1: the internal topics default to replication 3, and the
    transaction coordinator and consumer groups wait forever for brokers that do not exist. One partition
    for the internal topics makes their first use (the first transaction, the first group) fast.
    """
    replicas = min(3, cluster_size)
    min_isr = 1 if replicas == 1 else 2
    internal = {
        f"{prefix}.{suffix}": value
        for prefix in ("offsets.topic", "transaction.state.log", "share.coordinator.state.topic")
        for suffix, value in (("replication.factor", str(replicas)), ("num.partitions", "1"))
    }
    return {
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        **internal,
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.min.isr": str(min_isr),
    }


SCRAM_MECHANISM = "SCRAM-SHA-512"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def _security(config: BrokerConfig) -> dict[str, str]:
    """Listener protocols; for a secured node also TLS files, SCRAM for clients and brokers, and ACLs.

    Clients and brokers share one SASL_SSL listener. The controller listener stays on loopback and speaks
    mutual TLS: SCRAM is not available to KRaft controllers, and plain text there would make anyone on the
    machine an anonymous caller of the controller's APIs. Brokers reach controllers with their certificate,
    whose subject is then a super user.
    """
    tls = config.tls
    if tls is None:
        return {"listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"}
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{tls.broker_user}" password="{tls.broker_password}";'
    )
    return {
        "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(tls.keystore),
        "ssl.keystore.password": tls.keystore_password,
        "ssl.key.password": tls.keystore_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.truststore),
        "listener.name.controller.ssl.client.auth": "required",
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "super.users": ";".join(tls.super_users),
        "allow.everyone.if.no.acl.found": "false",
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
    """(Re)write the generated files; they are derived data, so rewriting on every start is safe.

    ``server.properties`` of a secured node holds the broker's passwords, so it is readable by its owner
    only (created so, never widened for a moment).
    """
    data_dir.root.mkdir(parents=True, exist_ok=True)
    data_dir.tmp_dir.mkdir(exist_ok=True)
    header = "Generated by orchestrator._devkafka on every start; edits are overwritten."
    write_private(data_dir.server_properties, render_properties(server_properties(data_dir, config), header))
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


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it may hold passwords or a private key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)
