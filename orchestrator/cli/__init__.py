"""The ``orchestrator`` command line: one Typer app, one module per command group."""

from __future__ import annotations

import importlib

import typer

from orchestrator.cli import _root

app = typer.Typer(
    name="orchestrator",
    help="Durable workflows on Apache Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.callback()(_root.setup)  # logging for every command: --log-level/--log-format before the command

# Each group module exposes ``register(app)``; a group whose module is not written yet is simply absent.
_GROUPS = ("kafka", "topics", "engine", "audit", "ui", "acls")


def _register_groups() -> None:
    for name in _GROUPS:
        try:
            module = importlib.import_module(f"orchestrator.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"orchestrator.cli.{name}":
                continue
            raise
        module.register(app)


_register_groups()


def main() -> None:
    """Run the CLI: Kafka failures and refused settings end it with one line (exit 2 or 4), no traceback."""
    _root.run(app)
