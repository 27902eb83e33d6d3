"""The web UI (``orchestrator ui``): runs, a run's timeline and history, actions, dead letters, schedules,
task queues. Server-rendered with Starlette and Jinja2; needs the ``ui`` extra (ADR 0019, docs/ui.md)."""

from orchestrator.ui.settings import UISettings
from orchestrator.ui.web import create_app

__all__ = ["UISettings", "create_app"]
