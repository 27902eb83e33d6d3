"""``orchestrator acls plan|apply``: the least-privilege Kafka ACLs of each engine component (ADR 0021)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator import _acls, _topic_admin
from orchestrator._acls import Acl, AppShape, Component
from orchestrator._engine import access, kafka
from orchestrator._engine.loading import load_app
from orchestrator.settings import Settings, load_settings

_console = Console()
_err = Console(stderr=True)

AppOption = Annotated[
    str,
    typer.Option(
        "--app",
        help="MODULE:ATTRIBUTE of your App (its queues and source topics are read from it), or the bare app "
        "name (then say its queues with --queue and its source topics with --source-topic).",
    ),
]
ComponentsOption = Annotated[
    list[Component] | None,
    typer.Option("--component", help="Only this component; repeat for several. [default: all]"),
]
QueueOption = Annotated[
    list[str] | None,
    typer.Option("--queue", help="With a bare app name: a task queue; repeat. [default: default]"),
]
SourceOption = Annotated[
    list[str] | None,
    typer.Option("--source-topic", help="With a bare app name: a topic its triggers/event sources read."),
]
CreateOption = Annotated[
    bool,
    typer.Option(
        "--create-topics",
        help="Also let components create missing engine topics (otherwise run `topics apply` as an admin).",
    ),
]
IdempotentOption = Annotated[
    bool,
    typer.Option("--idempotent-write", help="Add cluster IdempotentWrite (brokers older than Kafka 3.0)."),
]
BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: the app's or env settings)."),
]


def app_shape(
    app_spec: str, queues: list[str] | None, sources: list[str] | None
) -> tuple[AppShape, Settings | None]:
    """The app's shape, and its settings when the app itself was loaded."""
    if ":" in app_spec:
        if queues or sources:
            raise _fail("--queue and --source-topic are for a bare app name; MODULE:APP says them itself")
        try:
            app = load_app(app_spec)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        return AppShape.of(app), app.settings
    try:
        shape = AppShape(app_spec, tuple(queues or ["default"]), tuple(sources or ()))
        _acls.engine_topic_names(shape)  # checks the names
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    return shape, None


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=2)


def _principals(shape: AppShape, given: list[str] | None) -> dict[Component, str]:
    """``User:{app}-{component}`` unless ``component=PRINCIPAL`` says otherwise."""
    out = {c: f"User:{shape.name}-{c.value}" for c in Component}
    for item in given or []:
        name, sep, principal = item.partition("=")
        if not sep or name not in {c.value for c in Component} or ":" not in principal:
            raise _fail(f"--principal {item!r}: expected COMPONENT=TYPE:NAME, e.g. processor=User:proc")
        out[Component(name)] = principal
    return out


def _table(acls: list[Acl], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("component", "resource", "name", "pattern", "operations", "why"):
        table.add_column(column, overflow="fold")
    for acl in acls:
        r = acl.resource
        ops = ", ".join(op.value for op in acl.operations)
        cells = [acl.component.value, r.kind.value, r.name, r.pattern.value, ops, acl.why]
        table.add_row(*(escape(cell) for cell in cells))
    return table


def plan(
    app_spec: AppOption,
    component: ComponentsOption = None,
    queue: QueueOption = None,
    source_topic: SourceOption = None,
    output: Annotated[
        str, typer.Option("--format", help="table, json or kafka-acls (kafka-acls.sh command lines).")
    ] = "table",
    principal: Annotated[
        list[str] | None,
        typer.Option(
            "--principal",
            help="For --format kafka-acls: COMPONENT=TYPE:NAME; repeat. [default: User:APP-COMPONENT]",
        ),
    ] = None,
    bootstrap: BootstrapOption = None,
    command_config: Annotated[
        str | None, typer.Option("--command-config", help="For --format kafka-acls: the admin's properties.")
    ] = None,
    create_topics: CreateOption = False,
    idempotent_write: IdempotentOption = False,
) -> None:
    """Print the ACLs each component needs (no cluster contact)."""
    if output not in {"table", "json", "kafka-acls"}:
        raise _fail(f"--format {output!r}: use table, json or kafka-acls")
    shape, settings = app_shape(app_spec, queue, source_topic)
    flags = {"create_topics": create_topics, "idempotent_write": idempotent_write}
    acls = _acls.plan(shape, component or tuple(Component), **flags)
    if output == "json":
        typer.echo(json.dumps(_acls.as_json(acls), indent=2))
    elif output == "kafka-acls":
        servers = bootstrap or (settings.bootstrap_servers if settings else "BOOTSTRAP")
        lines = _acls.kafka_acls_commands(
            acls, _principals(shape, principal), bootstrap=servers, command_config=command_config
        )
        typer.echo("\n".join(lines))
    else:
        _console.print(_table(acls, f"Least-privilege ACLs of app {shape.name!r}"))


def apply(
    app_spec: AppOption,
    component: Annotated[Component, typer.Option("--component", help="The component the principal runs.")],
    principal: Annotated[str, typer.Option("--principal", help="Kafka principal, e.g. User:proc.")],
    queue: QueueOption = None,
    source_topic: SourceOption = None,
    bootstrap: BootstrapOption = None,
    create_topics: CreateOption = False,
    idempotent_write: IdempotentOption = False,
) -> None:
    """Create the planned ACLs of one component for PRINCIPAL (AdminClient.create_acls, as an admin)."""
    if ":" not in principal:
        raise _fail(f"--principal {principal!r}: expected TYPE:NAME, e.g. User:proc")
    shape, app_settings = app_shape(app_spec, queue, source_topic)
    overrides: dict[str, object] = {"bootstrap_servers": bootstrap} if bootstrap else {}
    settings = app_settings if app_settings is not None and not bootstrap else load_settings(**overrides)
    flags = {"create_topics": create_topics, "idempotent_write": idempotent_write}
    acls = _acls.plan(shape, [component], **flags)
    admin = _topic_admin.admin_client(settings)
    try:
        count = _acls.apply(admin, acls, principal)
    except _acls.AclApplyError as exc:
        reason = access.check(settings, kafka.base(settings)) or exc  # a refused login, not a refused ACL
        _err.print(
            f"[bold red]error[/] ({settings.bootstrap_servers}): {escape(str(reason))}", highlight=False
        )
        raise typer.Exit(code=1) from exc
    _console.print(
        f"[green]{count} ACL binding(s)[/] for {escape(principal)} as {component.value} of app "
        f"{shape.name!r} on {settings.bootstrap_servers}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``acls`` command group to the ``orchestrator`` CLI."""
    group = typer.Typer(
        help="Least-privilege Kafka ACLs per engine component (processor, worker, client, ui)."
    )
    group.command("plan")(plan)
    group.command("apply")(apply)
    app.add_typer(group, name="acls", no_args_is_help=True)
