"""``orchestrator kafka``: run a real local Kafka broker for development, tests and demos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import _devkafka
from orchestrator._devkafka import BrokerInfo, DevKafkaError
from orchestrator.cli import _json
from orchestrator.cli._json import JsonFlag

_console = Console()
_err = Console(stderr=True)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Broker data dir (default: $ORCHESTRATOR_KAFKA_DIR or var/kafka).", show_default=False
    ),
]
PortOption = Annotated[
    int | None,
    typer.Option(
        "--port",
        help="Client listener port on 127.0.0.1 [default: as recorded in --dir, else 19092]; "
        "node i of a cluster adds 2*i.",
        show_default=False,
    ),
]
ControllerPortOption = Annotated[
    int | None,
    typer.Option(
        "--controller-port",
        help="KRaft controller port on 127.0.0.1, fixed once formatted [default: as recorded, else 19093]; "
        "node i of a cluster adds 2*i.",
        show_default=False,
    ),
]
BrokersOption = Annotated[
    int,
    typer.Option(
        "--brokers",
        min=1,
        help="Nodes of the cluster (static KRaft quorum; with 3: replication 3, min ISR 2). "
        "Fixed once the data dir is formatted.",
    ),
]
SecureOption = Annotated[
    bool,
    typer.Option(
        "--secure",
        help="SASL_SSL (SCRAM-SHA-512) listener, a generated CA, ACLs on; writes client.properties for "
        "the engine. Fixed once the data dir is formatted.",
    ),
]


def _fail(exc: DevKafkaError, as_json: bool = False, **fields: object) -> typer.Exit:
    """Exit 1 with the broker's trouble; under ``--json`` as ``{"error": ..., **fields}`` on stdout too."""
    if as_json:
        return _json.fail(str(exc), code=1, **fields)
    _err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(code=1)


def _info_table(info: BrokerInfo, title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("bootstrap", info.bootstrap)
    if info.brokers > 1:
        running = {node.node_id for node in info.nodes}
        for missing in sorted(set(range(1, info.brokers + 1)) - running):
            table.add_row(f"node {missing}", "[red]not running[/] (start again with the same options)")
        for node in info.nodes:
            table.add_row(
                f"node {node.node_id}", f"pid {node.pid}, {node.bootstrap}, log {escape(str(node.log_path))}"
            )
    else:
        table.add_row("pid", str(info.pid))
        table.add_row("log", escape(str(info.log_path)))
    table.add_row("data dir", escape(str(info.data_dir)))
    if info.client_properties is not None:
        # The file holds the admin password; only its path is shown.
        table.add_row("security", "SASL_SSL, SCRAM-SHA-512, ACLs on")
        table.add_row("client config", escape(str(info.client_properties)))
    table.add_row("kafka", info.kafka_version)
    return table


def _what(info: BrokerInfo) -> str:
    return "Kafka broker" if info.brokers == 1 else f"Kafka cluster of {info.brokers} brokers"


def start(
    data_dir: DirOption = None,
    port: PortOption = None,
    controller_port: ControllerPortOption = None,
    brokers: BrokersOption = 1,
    secure: SecureOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Start the broker(s) for a data dir, or reuse those already running there.

    With ``--json``: the broker(s) as ``kafka status --json`` shows them, plus ``started`` (false when
    reused) and ``seconds`` (until every broker answered); for scripts that need the bootstrap and pid.
    """
    try:
        info = _devkafka.start(data_dir, port, controller_port, brokers=brokers, secure=secure)
    except DevKafkaError as exc:
        raise _fail(exc, as_json, running=False, data_dir=_where(data_dir)) from exc
    if as_json:
        _json.emit({**_info_json(info), "started": info.started_new, "seconds": round(info.seconds, 3)})
        return
    how = "started" if info.started_new else "[yellow]reused[/] (already running)"
    table = _info_table(info, f"{_what(info)} {how}")
    table.add_row("ready in", f"{info.seconds:.2f} s")
    _console.print(table)


def _where(data_dir: Path | None) -> str:
    return str(data_dir or _devkafka.default_data_dir())


def stop(data_dir: DirOption = None, as_json: JsonFlag = False) -> None:
    """Stop the data dir's broker(s) (SIGTERM, then SIGKILL after 30 s); their data is kept.

    With ``--json``: ``{"stopped": true|false, "data_dir": ...}`` (false: nothing was running); exit 0 both.
    """
    try:
        stopped = _devkafka.stop(data_dir)
    except DevKafkaError as exc:
        raise _fail(exc, as_json, stopped=False, data_dir=_where(data_dir)) from exc
    if as_json:
        _json.emit({"stopped": stopped, "data_dir": _where(data_dir)})
        return
    where = data_dir or _devkafka.default_data_dir()
    _console.print(f"Kafka broker(s) of {where} " + ("[green]stopped[/]" if stopped else "not running"))


def _info_json(info: BrokerInfo) -> dict[str, object]:
    """The broker(s) of a data dir, for ``--json``: paths, never the client config (it holds a password)."""
    return {
        "running": True,
        "ready": info.ready,
        "bootstrap": info.bootstrap,
        "brokers": info.brokers,
        "pid": info.pid,
        "log": str(info.log_path),
        "data_dir": str(info.data_dir),
        "nodes": [
            {"node_id": n.node_id, "pid": n.pid, "bootstrap": n.bootstrap, "log": str(n.log_path)}
            for n in info.nodes
        ],
        "secure": info.secure,
        "client_properties": None if info.client_properties is None else str(info.client_properties),
        "kafka_version": info.kafka_version,
    }


def status(data_dir: DirOption = None, as_json: JsonFlag = False) -> None:
    """Show the data dir's broker(s); exit code 1 if not all are running and answering."""
    info = _devkafka.status(data_dir)
    if as_json:
        doc = (
            {"running": False, "ready": False, "data_dir": _where(data_dir)}
            if info is None
            else _info_json(info)
        )
        _json.emit(doc)
        raise typer.Exit(code=0 if info is not None and info.ready else 1)
    if info is None:
        _console.print(f"No Kafka broker running for {data_dir or _devkafka.default_data_dir()}")
        raise typer.Exit(code=1)
    state = "[green]running[/]" if info.ready else "[yellow]running, not (all) answering[/]"
    _console.print(_info_table(info, f"{_what(info)} {state}"))
    if not info.ready:
        raise typer.Exit(code=1)


def jars(as_json: JsonFlag = False) -> None:
    """Download the broker jars from Maven Central if this machine lacks them; print their folder.

    With ``--json``: ``{"kafka_version": ..., "jars": folder}``.
    """
    try:
        lib = _devkafka.ensure_jars()
    except DevKafkaError as exc:
        raise _fail(exc, as_json, kafka_version=_devkafka.KAFKA_VERSION, jars=None) from exc
    if as_json:
        _json.emit({"kafka_version": _devkafka.KAFKA_VERSION, "jars": str(lib)})
        return
    _console.print(f"Kafka {_devkafka.KAFKA_VERSION} jars: {lib}")


def register(app: typer.Typer) -> None:
    """Add the ``kafka`` command group to the ``orchestrator`` CLI."""
    group = typer.Typer(help="Run a real local Kafka broker or cluster (KRaft, loopback) for dev and tests.")
    group.command("start")(start)
    group.command("stop")(stop)
    group.command("status")(status)
    group.command("jars")(jars)
    app.add_typer(group, name="kafka", no_args_is_help=True)
