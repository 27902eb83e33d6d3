"""The shape of a data dir: how many nodes, on which ports, secured or not, formatted with which cluster id.

A data dir holds either one broker (its files at the top, as before clusters existed) or several, one
subdirectory per node. Its shape is fixed once the nodes are formatted: the controller endpoints are written
into every node's metadata log, and SCRAM credentials exist only if formatting added them. So the shape is
recorded in ``cluster.json`` at the first start and checked on every later one, turning "the new broker
cannot find its quorum" (seen minutes later in a log) into an immediate error that says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator._devkafka.config import LOOPBACK, DataDir, Voter
from orchestrator._devkafka.errors import DevKafkaError

SHAPE_FILE = "cluster.json"
PORT_STEP = 2
"""Node i listens on ``port + 2*i`` and ``controller_port + 2*i``: 19092/19093, 19094/19095, 19096/19097."""


@dataclass(frozen=True)
class NodePorts:
    node_id: int
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"


@dataclass(frozen=True)
class Shape:
    """What ``cluster.json`` records about a data dir."""

    brokers: int
    secure: bool
    cluster_id: str
    heap_mb: int
    nodes: tuple[NodePorts, ...]

    @property
    def bootstrap(self) -> str:
        """Every node's client address, so a client still connects while any one of them is down."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def voters(self) -> tuple[Voter, ...]:
        if self.brokers == 1:
            return ()
        return tuple(Voter(node.node_id, node.controller_port) for node in self.nodes)


def node_dir(root: Path, node_id: int, brokers: int) -> DataDir:
    """A single broker keeps its files at the top of the data dir; a cluster's node ``i`` in ``node-i``."""
    return DataDir(root if brokers == 1 else root / f"node-{node_id}")


def plan_nodes(
    port: int | Sequence[int], controller_port: int | Sequence[int], brokers: int
) -> tuple[NodePorts, ...]:
    """Each node's ports: explicit lists (tests pass free ports) or first ports stepped by ``PORT_STEP``."""
    if brokers < 1:
        raise DevKafkaError(f"A cluster needs at least one broker (asked for {brokers}).")
    ports = _spread(port, brokers, "--port")
    controller_ports = _spread(controller_port, brokers, "--controller-port")
    every = [*ports, *controller_ports]
    if len(set(every)) != len(every):
        raise DevKafkaError(
            f"The brokers' ports {ports} and controller ports {controller_ports} must all differ; with "
            f"--brokers {brokers}, node i uses --port + {PORT_STEP}*i and --controller-port + {PORT_STEP}*i, "
            "so pick a controller port of --port + 1."
        )
    for number in every:
        if not 0 < number < 65536:
            raise DevKafkaError(f"Port {number} is not a TCP port (1-65535).")
    return tuple(NodePorts(i + 1, p, c) for i, (p, c) in enumerate(zip(ports, controller_ports, strict=True)))


def _spread(first: int | Sequence[int], brokers: int, flag: str) -> list[int]:
    if isinstance(first, int):
        return [first + PORT_STEP * i for i in range(brokers)]
    ports = list(first)
    if len(ports) != brokers:
        raise DevKafkaError(f"{flag}: {len(ports)} ports given for {brokers} brokers.")
    return ports


def shape_path(root: Path) -> Path:
    return root / SHAPE_FILE


def write_shape(root: Path, shape: Shape) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = shape_path(root).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(shape), indent=2) + "\n", encoding="utf-8")
    tmp.replace(shape_path(root))


def read_shape(root: Path) -> Shape | None:
    """The recorded shape; None for a fresh dir. A broker dir from before clusters reads as one plain node."""
    try:
        raw = json.loads(shape_path(root).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DevKafkaError(f"{shape_path(root)} is not valid JSON ({exc}); use a new --dir.") from exc
    try:
        nodes = tuple(NodePorts(**node) for node in raw.pop("nodes"))
        return Shape(nodes=nodes, **raw)
    except (KeyError, TypeError) as exc:
        message = f"{shape_path(root)} is not a shape this version knows; use a new --dir."
        raise DevKafkaError(message) from exc


def check_same_shape(root: Path, recorded: Shape, brokers: int, secure: bool) -> None:
    """A formatted data dir cannot change its number of nodes or its security; say so before starting."""
    if recorded.brokers != brokers:
        raise DevKafkaError(
            f"{root} holds a {recorded.brokers}-broker cluster; start it with --brokers {recorded.brokers} "
            "or use a new --dir."
        )
    if recorded.secure != secure:
        how = "with" if recorded.secure else "without"
        raise DevKafkaError(
            f"{root} was formatted {how} --secure; start it {how} --secure or use a new --dir."
        )


def check_controllers_unchanged(root: Path, recorded: Shape, planned: tuple[NodePorts, ...]) -> None:
    """Controller endpoints live in each node's metadata log: they cannot move once formatted."""
    before = [node.controller_port for node in recorded.nodes]
    now = [node.controller_port for node in planned]
    if before != now:
        raise DevKafkaError(
            f"{root} was formatted for controller port(s) {before}; start it with --controller-port "
            f"{before[0]} or use a new --dir."
        )
