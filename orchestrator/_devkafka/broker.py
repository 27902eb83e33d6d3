"""Start, stop and query the local Kafka broker of a data dir: one node, or a cluster of several.

Brokers run detached (their own session, output to ``broker.log``) so they outlive the command that started
them: ``orchestrator kafka start`` returns while the brokers keep serving tests and demos. A second ``start``
on the same data dir finds the running brokers through their pid files and reuses them rather than fail on
the busy ports or, worse, start a second broker on the same storage; nodes of a cluster that are down (a
test killed one) are started again, which is how a killed node is brought back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from orchestrator._devkafka import cluster, probe, process, security, state
from orchestrator._devkafka.cluster import NodePorts, Shape, node_dir
from orchestrator._devkafka.config import (
    BrokerConfig,
    DataDir,
    TlsSettings,
    new_cluster_id,
    read_properties,
    write_config_files,
)
from orchestrator._devkafka.errors import DevKafkaError
from orchestrator._devkafka.jars import KAFKA_VERSION, check_java, ensure_jars
from orchestrator._devkafka.security import Credentials, SecureFiles

DATA_DIR_ENV = "ORCHESTRATOR_KAFKA_DIR"
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
START_TIMEOUT_S = 90.0
"""Per start of one broker; a cluster gets twice as long (its JVMs share the machine's cores)."""


@dataclass(frozen=True)
class NodeInfo:
    """One running node of a data dir."""

    node_id: int
    pid: int
    bootstrap: str
    """This node's own client address."""
    controller_port: int
    data_dir: Path
    log_path: Path


@dataclass(frozen=True)
class BrokerInfo:
    """The running broker(s) of a data dir as seen by ``start`` or ``status``."""

    bootstrap: str
    """Every node's client address, comma-separated."""
    pid: int
    """The first running node's pid (the only one of a single broker); ``nodes`` has them all."""
    log_path: Path
    data_dir: Path
    started_new: bool
    """False when ``start`` found every node of this data dir already running and reused them."""
    seconds: float
    """Wall-clock seconds the call took (for ``start``: until every broker answered)."""
    ready: bool = True
    """Whether the brokers answered a metadata request (``status`` may see them still booting)."""
    kafka_version: str = KAFKA_VERSION
    nodes: tuple[NodeInfo, ...] = ()
    """The nodes running now (``status`` of a cluster with a node down lists fewer than ``brokers``)."""
    brokers: int = 1
    """How many nodes the data dir was formatted for."""
    secure: bool = False
    client_properties: Path | None = None
    """A secured data dir's librdkafka settings file (holds the admin password; owner-only)."""
    client_config: dict[str, str] = field(default_factory=dict, repr=False)
    """Settings a confluent-kafka client needs here: ``bootstrap.servers``, plus SASL/TLS when secured."""


def default_data_dir() -> Path:
    """``$ORCHESTRATOR_KAFKA_DIR`` or ``var/kafka`` under the current directory."""
    return Path(os.environ.get(DATA_DIR_ENV, "var/kafka"))


def _root(data_dir: Path | None) -> Path:
    # Absolute, because the path is part of the broker's command line that identifies it later.
    return (data_dir or default_data_dir()).expanduser().resolve()


def start(
    data_dir: Path | None = None,
    port: int | Sequence[int] | None = None,
    controller_port: int | Sequence[int] | None = None,
    *,
    timeout: float | None = None,
    heap_mb: int | None = None,
    brokers: int = 1,
    secure: bool = False,
) -> BrokerInfo:
    """Return the data dir's ready broker(s): those already running there, plus any that had to start.

    ``port``/``controller_port`` are the first node's ports (node i adds ``2*i``) or one per node; by
    default the recorded ones, else 19092/19093. ``heap_mb`` defaults to 512 for one broker, 384 per node
    of a cluster. ``secure`` gives a SASL_SSL listener and writes ``client.properties`` (see ``security``).
    """
    began = time.monotonic()
    root = _root(data_dir)
    deadline = began + (timeout or START_TIMEOUT_S * (1 if brokers == 1 else 2))
    recorded = _recorded_shape(root, brokers, secure)
    nodes = _plan(root, recorded, port, controller_port, brokers)
    files = SecureFiles(root)
    credentials = security.ensure_credentials(files) if secure else None
    running = {
        n.node_id: pid for n in nodes if (pid := state.running_pid(node_dir(root, n.node_id, brokers)))
    }
    if recorded is not None and len(running) == brokers:
        client = _client_config(recorded, files, credentials)
        _wait_answers(root, recorded, client, deadline)
        return _info(root, recorded, client, False, time.monotonic() - began)
    if recorded is None and running:  # a single broker started before data dirs recorded their shape
        return _reuse_legacy(root, running[1], began, deadline)
    lib = ensure_jars()
    java = check_java()
    shape = Shape(
        brokers, secure, _cluster_id(root, recorded), heap_mb or recorded_heap(recorded, brokers), nodes
    )
    to_launch = [node for node in nodes if node.node_id not in running]
    _check_ports_free(to_launch)
    tls = _prepare_tls(files, credentials)
    cluster.write_shape(root, shape)
    configs = {node.node_id: _node_config(shape, node, tls) for node in to_launch}
    for node_id, config in configs.items():
        layout = node_dir(root, node_id, brokers)
        write_config_files(layout, config)
        process.format_once(java, lib, layout, config, shape.cluster_id, credentials)
    client = _client_config(shape, files, credentials)
    if credentials is not None:
        security.write_client_properties(files, client)
    launched = {
        node_id: process.launch(java, lib, node_dir(root, node_id, brokers), config)
        for node_id, config in configs.items()
    }
    for node_id, child in launched.items():
        _record(node_dir(root, node_id, brokers), child.pid, configs[node_id], shape.cluster_id, 0.0)
    _wait_started(root, shape, launched, client, deadline)
    seconds = time.monotonic() - began
    for node_id, child in launched.items():
        _record(node_dir(root, node_id, brokers), child.pid, configs[node_id], shape.cluster_id, seconds)
    return _info(root, shape, client, True, seconds)


def recorded_heap(recorded: Shape | None, brokers: int) -> int:
    if recorded is not None:
        return recorded.heap_mb
    return 512 if brokers == 1 else 384


def _recorded_shape(root: Path, brokers: int, secure: bool) -> Shape | None:
    recorded = cluster.read_shape(root)
    if recorded is not None:
        cluster.check_same_shape(root, recorded, brokers, secure)
    elif DataDir(root).meta_properties.is_file() and (brokers > 1 or secure):
        raise DevKafkaError(
            f"{root} holds a plain single broker formatted earlier; start it without --brokers/--secure "
            "or use a new --dir."
        )
    return recorded


def _plan(
    root: Path,
    recorded: Shape | None,
    port: int | Sequence[int] | None,
    controller_port: int | Sequence[int] | None,
    brokers: int,
) -> tuple[NodePorts, ...]:
    """Each node's ports: as asked, else as recorded, else the defaults; checked against the formatting."""
    if recorded is not None:
        port = port if port is not None else [node.port for node in recorded.nodes]
        controller_port = (
            controller_port if controller_port is not None else [n.controller_port for n in recorded.nodes]
        )
    nodes = cluster.plan_nodes(
        port if port is not None else DEFAULT_PORT,
        controller_port if controller_port is not None else DEFAULT_CONTROLLER_PORT,
        brokers,
    )
    if recorded is not None:
        cluster.check_controllers_unchanged(root, recorded, nodes)
        if brokers > 1 and nodes != recorded.nodes:
            raise DevKafkaError(
                f"{root} is a cluster on ports {[n.port for n in recorded.nodes]}; its ports are fixed "
                "(start it without --port) or use a new --dir."
            )
    else:
        _check_legacy_controller_port(DataDir(root), nodes[0])
    return nodes


def _cluster_id(root: Path, recorded: Shape | None) -> str:
    if recorded is not None:
        return recorded.cluster_id
    legacy = DataDir(root).meta_properties  # a single broker formatted before shapes were recorded
    if legacy.is_file():
        return read_properties(legacy).get("cluster.id") or new_cluster_id()
    return new_cluster_id()


def _prepare_tls(files: SecureFiles, credentials: Credentials | None) -> TlsSettings | None:
    if credentials is None:
        return None
    security.ensure_tls(files, credentials)
    return security.tls_settings(files, credentials)


def _node_config(shape: Shape, node: NodePorts, tls: TlsSettings | None) -> BrokerConfig:
    return BrokerConfig(
        port=node.port, controller_port=node.controller_port, node_id=node.node_id,
        heap_mb=shape.heap_mb, voters=shape.voters, tls=tls,
    )  # fmt: skip


def _client_config(shape: Shape, files: SecureFiles, credentials: Credentials | None) -> dict[str, str]:
    if credentials is None:
        return {"bootstrap.servers": shape.bootstrap}
    return security.client_config(shape.bootstrap, files, credentials)


def _record(layout: DataDir, pid: int, config: BrokerConfig, cluster_id: str, seconds: float) -> None:
    state.write_pid(layout, pid)
    state.write_state(
        layout,
        state.RecordedState(
            pid=pid, bootstrap=config.bootstrap, port=config.port, controller_port=config.controller_port,
            cluster_id=cluster_id, kafka_version=KAFKA_VERSION, started_at=time.time(),
            startup_seconds=round(seconds, 3),
        ),
    )  # fmt: skip


def _info(root: Path, shape: Shape, client: dict[str, str], started_new: bool, seconds: float) -> BrokerInfo:
    nodes = _running_nodes(root, shape)
    if not nodes:
        raise DevKafkaError(f"No broker of {root} is running any more; see the broker.log files there.")
    secure_file = SecureFiles(root).client_properties if shape.secure else None
    return BrokerInfo(
        shape.bootstrap, nodes[0].pid, nodes[0].log_path, root, started_new, seconds,
        nodes=nodes, brokers=shape.brokers, secure=shape.secure, client_properties=secure_file,
        client_config=client,
    )  # fmt: skip


def _running_nodes(root: Path, shape: Shape) -> tuple[NodeInfo, ...]:
    found = []
    for node in shape.nodes:
        layout = node_dir(root, node.node_id, shape.brokers)
        pid = state.running_pid(layout)
        if pid is not None:
            found.append(
                NodeInfo(
                    node.node_id, pid, node.bootstrap, node.controller_port, layout.root, layout.log_path
                )
            )
    return tuple(found)


def _wait_answers(root: Path, shape: Shape, client: dict[str, str], deadline: float) -> None:
    """Wait for already running brokers (they may still be booting after another ``start``)."""
    admin = probe.admin_client(shape.bootstrap, client)
    while not probe.answers(admin, 2.0, shape.brokers):
        if time.monotonic() > deadline or len(_running_nodes(root, shape)) < shape.brokers:
            logs = [node_dir(root, n.node_id, shape.brokers).log_path for n in shape.nodes]
            raise DevKafkaError(
                f"The brokers of {root} are running but do not all answer on {shape.bootstrap}. Stop them "
                f"with 'orchestrator kafka stop --dir {root}'. Logs: {', '.join(map(str, logs))}"
            )
        time.sleep(0.2)


def _reuse_legacy(root: Path, pid: int, began: float, deadline: float) -> BrokerInfo:
    layout = DataDir(root)
    bootstrap = _recorded_bootstrap(layout)
    admin = probe.admin_client(bootstrap)
    while not (probe.tcp_open(int(bootstrap.rpartition(":")[2])) and probe.answers(admin, 2.0)):
        if time.monotonic() > deadline or not state.is_our_broker(pid, layout):
            raise DevKafkaError(
                f"The broker of {root} (pid {pid}) is running but does not answer on {bootstrap}. "
                f"Stop it with 'orchestrator kafka stop --dir {root}'. Log tail:\n"
                + process.log_tail(layout.log_path)
            )
        time.sleep(0.2)
    node = NodeInfo(1, pid, bootstrap, 0, root, layout.log_path)
    return BrokerInfo(
        bootstrap, pid, layout.log_path, root, False, time.monotonic() - began,
        nodes=(node,), client_config={"bootstrap.servers": bootstrap},
    )  # fmt: skip


def _recorded_bootstrap(layout: DataDir) -> str:
    recorded = state.read_state(layout)
    if recorded is not None:
        return recorded.bootstrap
    listeners = read_properties(layout.server_properties).get("listeners", "")
    for listener in listeners.split(","):
        if listener.startswith("PLAINTEXT://"):
            return listener.removeprefix("PLAINTEXT://")
    raise DevKafkaError(f"Cannot tell where the broker of {layout.root} listens (no state file)")


def _check_ports_free(nodes: Sequence[NodePorts]) -> None:
    for node in nodes:
        for name, port in (("broker", node.port), ("controller", node.controller_port)):
            if not probe.port_is_free(port):
                raise DevKafkaError(
                    f"The {name} port 127.0.0.1:{port} is already in use by {probe.port_owner(port)}. "
                    f"Stop it or choose another with --{'port' if name == 'broker' else 'controller-port'}."
                )


def _check_legacy_controller_port(layout: DataDir, node: NodePorts) -> None:
    """A formatted dir records its controller endpoint in the metadata log; it cannot move afterwards."""
    if not (layout.meta_properties.is_file() and layout.server_properties.is_file()):
        return
    previous = read_properties(layout.server_properties).get("controller.quorum.bootstrap.servers")
    if previous and previous != f"127.0.0.1:{node.controller_port}":
        raise DevKafkaError(
            f"{layout.root} was formatted for controller {previous}; start it with that controller port "
            "or use a new --dir."
        )


def _wait_started(
    root: Path,
    shape: Shape,
    launched: dict[int, subprocess.Popen[bytes]],
    client: dict[str, str],
    deadline: float,
) -> None:
    """Wait until every launched node answers on its own port and the cluster lists all its brokers.

    The nodes of a cluster are launched together and waited for together: none becomes ready before a
    majority of the controllers runs.
    """
    ports = {node.node_id: node for node in shape.nodes}
    pending = dict(launched)
    admins: dict[int, AdminClient] = {}
    while True:
        for node_id, child in list(pending.items()):
            layout = node_dir(root, node_id, shape.brokers)
            code = child.poll()
            if code is not None:
                _abort(root, shape, launched)
                raise DevKafkaError(
                    f"Broker node {node_id} exited with code {code} while starting. Log tail "
                    f"({layout.log_path}):\n" + process.log_tail(layout.log_path)
                )
            node = ports[node_id]
            if probe.tcp_open(node.port):
                admin = admins.setdefault(node_id, probe.admin_client(node.bootstrap, client))
                if probe.answers(admin, 2.0):
                    del pending[node_id]
        if not pending and probe.broker_answers(shape.bootstrap, 3.0, client, shape.brokers):
            return
        if time.monotonic() > deadline:
            _abort(root, shape, launched)
            logs = [node_dir(root, node_id, shape.brokers).log_path for node_id in launched]
            tail = process.log_tail(logs[0])
            raise DevKafkaError(
                f"The broker(s) did not all answer on {shape.bootstrap} in time and were stopped "
                f"(waiting for nodes {sorted(pending) or 'to see each other'}). Logs: "
                f"{', '.join(map(str, logs))}; tail of the first:\n{tail}"
            )
        time.sleep(0.1)


def _abort(root: Path, shape: Shape, launched: dict[int, subprocess.Popen[bytes]]) -> None:
    for node_id, child in launched.items():
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        process.wait_gone(child.pid, 10.0)
        state.clear_run_files(node_dir(root, node_id, shape.brokers))


def _node_dirs(root: Path) -> list[tuple[int, DataDir]]:
    """Every node's dir of a data dir (a dir from before shapes were recorded is one broker at the top)."""
    shape = cluster.read_shape(root)
    if shape is None:
        return [(1, DataDir(root))]
    return [(node.node_id, node_dir(root, node.node_id, shape.brokers)) for node in shape.nodes]


def stop(data_dir: Path | None = None, *, timeout: float = process.STOP_TIMEOUT_S) -> bool:
    """Stop the data dir's broker(s); False if none was running. The formatted storage is kept.

    Every node gets SIGTERM at once: stopped one by one, the last ones would wait in vain for a controller
    quorum the earlier ones took away, until the SIGKILL after ``timeout``.
    """
    running = [
        (layout, pid) for _, layout in _node_dirs(_root(data_dir)) if (pid := state.running_pid(layout))
    ]
    for _, pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for layout, pid in running:
        process.terminate(pid, max(0.1, deadline - time.monotonic()))
        state.clear_run_files(layout)
    return bool(running)


def kill_node(data_dir: Path | None, node_id: int) -> bool:
    """SIGKILL one node (what a crashed machine looks like); False if it was not running.

    ``start`` (or :func:`restart_node`) on the same data dir brings it back on its ports and storage.
    """
    for each_id, layout in _node_dirs(_root(data_dir)):
        pid = state.running_pid(layout)
        if each_id == node_id and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            process.wait_gone(pid, 30.0)
            state.clear_run_files(layout)
            return True
    return False


def restart_node(data_dir: Path | None, node_id: int, *, timeout: float | None = None) -> BrokerInfo:
    """Start a stopped node again, as recorded (every other stopped node of the data dir comes back too)."""
    root = _root(data_dir)
    shape = cluster.read_shape(root)
    if shape is None or node_id not in {node.node_id for node in shape.nodes}:
        raise DevKafkaError(f"{root} has no node {node_id} (start the cluster first).")
    return start(root, brokers=shape.brokers, secure=shape.secure, heap_mb=shape.heap_mb, timeout=timeout)


def status(data_dir: Path | None = None) -> BrokerInfo | None:
    """The data dir's running broker(s) (``ready``: all of them answer), or None if none runs."""
    began = time.monotonic()
    root = _root(data_dir)
    shape = cluster.read_shape(root)
    if shape is None:
        return _legacy_status(root, began)
    files = SecureFiles(root)
    credentials = security.read_credentials(files) if shape.secure else None
    client = _client_config(shape, files, credentials)
    nodes = _running_nodes(root, shape)
    if not nodes:
        return None
    ready = len(nodes) == shape.brokers and probe.broker_answers(shape.bootstrap, 3.0, client, shape.brokers)
    return BrokerInfo(
        shape.bootstrap, nodes[0].pid, nodes[0].log_path, root, False, time.monotonic() - began, ready=ready,
        nodes=nodes, brokers=shape.brokers, secure=shape.secure,
        client_properties=files.client_properties if shape.secure else None, client_config=client,
    )  # fmt: skip


def _legacy_status(root: Path, began: float) -> BrokerInfo | None:
    layout = DataDir(root)
    pid = state.running_pid(layout)
    if pid is None:
        return None
    bootstrap = _recorded_bootstrap(layout)
    ready = probe.broker_answers(bootstrap)
    node = NodeInfo(1, pid, bootstrap, 0, root, layout.log_path)
    return BrokerInfo(
        bootstrap, pid, layout.log_path, root, False, time.monotonic() - began, ready=ready,
        nodes=(node,), client_config={"bootstrap.servers": bootstrap},
    )  # fmt: skip
