"""The ``orchestrator`` command line: one Typer app, one module per command group."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="orchestrator",
    help="Durable workflows on Apache Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each group module exposes ``register(app)``; a group whose module is not written yet is simply absent.
_GROUPS = ("kafka", "topics", "engine", "audit", "acls")


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
    """Run the CLI; Kafka settings that are wrong end it with their one-paragraph explanation (exit 2)."""
    from pydantic import ValidationError

    from orchestrator._engine.access import KafkaAccessError
    from orchestrator._kafka_config import KafkaConfigError

    try:
        app()
    except (KafkaAccessError, KafkaConfigError, ValidationError) as exc:
        # A traceback would bury the one line that says which setting to fix; none of these holds a secret.
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
