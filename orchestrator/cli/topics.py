"""``orchestrator topics plan|apply``: the engine's topics as code (``topics/engine.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import _topic_admin
from orchestrator._engine import access, kafka
from orchestrator._topic_admin import TopicAdminError, TopicChange
from orchestrator.cli import _json
from orchestrator.cli._json import JsonFlag
from orchestrator.settings import Settings, load_settings
from orchestrator.topology import TopicSpec, engine_topics

_console = Console()
_err = Console(stderr=True)

AppOption = Annotated[str, typer.Option("--app", help="Application name: the {app} in topic names.")]
QueueOption = Annotated[
    list[str] | None,
    typer.Option("--queue", help="Task queue needing a tasks topic; repeat for several. [default: default]"),
]
BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: ORCHESTRATOR_BOOTSTRAP_SERVERS)."),
]
FixConfigOption = Annotated[
    bool, typer.Option("--fix-config", help="Set declared config values that differ on existing topics.")
]
IncreaseOption = Annotated[
    bool,
    typer.Option(
        "--allow-partition-increase",
        help="Add partitions to topics that have fewer than declared (moves keys: existing runs misplace).",
    ),
]


def _specs(
    app_name: str, queues: list[str] | None, bootstrap: str | None
) -> tuple[Settings, list[TopicSpec]]:
    overrides: dict[str, object] = {"bootstrap_servers": bootstrap} if bootstrap else {}
    settings = load_settings(**overrides)
    try:
        specs = engine_topics(app_name, settings, queues or ["default"])
    except ValueError as exc:
        _err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from exc
    return settings, specs


def _status(change: TopicChange, applying: bool) -> str:
    if change.applied:
        return "[green]done[/]"
    if not change.allowed:
        return "[yellow]left as is[/]"
    return "[cyan]will apply[/]" if not applying else "[red]not done[/]"


def _table(changes: list[TopicChange], title: str, applying: bool) -> Table:
    table = Table(title=title, title_justify="left")
    # Columns that would be empty for every row are left out: the table must fit a terminal.
    with_key = any(change.key for change in changes)
    with_note = any(change.hint for change in changes)
    columns = ["topic", "change", *(["key"] if with_key else []), "current", "declared", "status"]
    for column in [*columns, *(["note"] if with_note else [])]:
        table.add_column(column, overflow="fold")
    for change in changes:
        row = [change.topic, change.kind.value, *([change.key or ""] if with_key else [])]
        row += [change.current, change.desired]
        # Values come from the cluster: escape them so a "[" is never read as Rich markup.
        cells = [escape(cell) for cell in row] + [_status(change, applying)]
        table.add_row(*cells, *([escape(change.hint)] if with_note else []))
    return table


def _change_json(change: TopicChange) -> dict[str, object]:
    return {
        "topic": change.topic,
        "change": change.kind.value,
        "key": change.key,
        "current": change.current,
        "declared": change.desired,
        "allowed": change.allowed,
        "applied": change.applied,
        "note": change.hint or None,
    }


def _run(
    app_name: str,
    queues: list[str] | None,
    bootstrap: str | None,
    apply: bool,
    as_json: bool = False,
    **flags: bool,
) -> None:
    settings, specs = _specs(app_name, queues, bootstrap)
    servers = settings.bootstrap_servers
    admin = _topic_admin.admin_client(settings)
    head = {"app": app_name, "bootstrap": servers, "mode": "apply" if apply else "plan"}
    try:
        if apply:
            changes = _topic_admin.apply(admin, specs, **flags)
        else:
            changes = _topic_admin.plan(admin, specs, **flags)
    except TopicAdminError as exc:
        reason = access.check(settings, kafka.base(settings)) or exc  # a refused login, not a slow broker
        if as_json:
            raise _json.fail(f"{servers}: {reason}", code=1, **head) from exc
        _err.print(f"[bold red]error[/] ({servers}): {escape(str(reason))}", highlight=False)
        raise typer.Exit(code=1) from exc
    left = [change for change in changes if not change.allowed]
    if as_json:
        _json.emit(
            {
                **head,
                "topics": len(specs),
                "in_sync": not changes,
                "changes": [_change_json(change) for change in changes],
            }
        )
        raise typer.Exit(code=1 if apply and left else 0)
    if not changes:
        count = len(specs)
        _console.print(
            f"[green]All {count} topics of app {app_name!r} match their declaration[/] ({servers})"
        )
        return
    verb = "Applied to" if apply else "Plan for"
    _console.print(_table(changes, f"{verb} app {app_name!r} on {servers}", apply))
    if apply and left:
        _err.print(f"[yellow]{len(left)} drift item(s) left as is; see the note column.[/]")
        raise typer.Exit(code=1)


def plan(
    app_name: AppOption,
    queue: QueueOption = None,
    bootstrap: BootstrapOption = None,
    fix_config: FixConfigOption = False,
    allow_partition_increase: IncreaseOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Show which engine topics are missing or differ from their declaration; change nothing."""
    flags = {"fix_config": fix_config, "allow_partition_increase": allow_partition_increase}
    _run(app_name, queue, bootstrap, False, as_json, **flags)


def apply(
    app_name: AppOption,
    queue: QueueOption = None,
    bootstrap: BootstrapOption = None,
    fix_config: FixConfigOption = False,
    allow_partition_increase: IncreaseOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Create missing engine topics; fix drift only where a flag allows it. Exit 1 if drift remains."""
    flags = {"fix_config": fix_config, "allow_partition_increase": allow_partition_increase}
    _run(app_name, queue, bootstrap, True, as_json, **flags)


def register(app: typer.Typer) -> None:
    """Add the ``topics`` command group to the ``orchestrator`` CLI."""
    group = typer.Typer(help="Create and check the engine's Kafka topics (declared in topics/engine.toml).")
    group.command("plan")(plan)
    group.command("apply")(apply)
    group.command("render")(render)
    app.add_typer(group, name="topics", no_args_is_help=True)


def render(
    app_spec: Annotated[
        str,
        typer.Option(
            "--app",
            help="MODULE:ATTRIBUTE of your App, or the app name (then --queue, --source-topic say the rest).",
        ),
    ],
    queue: QueueOption = None,
    source_topic: Annotated[
        list[str] | None,
        typer.Option("--source-topic", help="With an app name: a topic its triggers/event sources read."),
    ] = None,
    output: Annotated[
        str, typer.Option("--format", help="strimzi (KafkaTopic, KafkaUser resources).")
    ] = "strimzi",
    users: Annotated[
        bool, typer.Option("--users", help="Also a KafkaUser per component with its planned ACLs.")
    ] = False,
    cluster: Annotated[
        str, typer.Option("--cluster", help="The Kafka resource's name (label strimzi.io/cluster).")
    ] = "my-cluster",
    namespace: Annotated[str | None, typer.Option("--namespace", help="metadata.namespace, if set.")] = None,
    authentication: Annotated[
        str, typer.Option("--authentication", help="KafkaUser authentication: scram-sha-512 or tls.")
    ] = "scram-sha-512",
    api_version: Annotated[
        str,
        typer.Option(
            "--api-version", help="kafka.strimzi.io/v1, or kafka.strimzi.io/v1beta2 (Strimzi < 0.49)."
        ),
    ] = "kafka.strimzi.io/v1",
    out: Annotated[Path | None, typer.Option("--out", help="Write the YAML here instead of stdout.")] = None,
) -> None:
    """Write the engine topics (and with --users the components' users) as Strimzi resources, YAML."""
    from orchestrator import _strimzi
    from orchestrator.cli.acls import app_shape

    if output != "strimzi":
        raise _usage(f"--format {output!r}: only strimzi")
    if api_version not in _strimzi.API_VERSIONS:
        raise _usage(f"--api-version {api_version!r}: use one of {', '.join(_strimzi.API_VERSIONS)}")
    if authentication not in _strimzi.AUTHENTICATIONS:
        raise _usage(f"--authentication {authentication!r}: use one of {', '.join(_strimzi.AUTHENTICATIONS)}")
    shape, app_settings = app_shape(app_spec, queue, source_topic)
    try:
        specs = engine_topics(shape.name, app_settings or load_settings(), shape.queues)
    except ValueError as exc:
        raise _usage(str(exc)) from exc
    resources = _strimzi.kafka_topics(specs, cluster, api_version=api_version, namespace=namespace)
    if users:
        resources += _strimzi.kafka_users(
            shape, cluster, authentication=authentication, api_version=api_version, namespace=namespace
        )
    text = _strimzi.to_yaml(resources)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        _err.print(f"wrote {len(resources)} resources to {escape(str(out))}", highlight=False)


def _usage(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=2)
