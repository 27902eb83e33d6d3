"""Finding the user's `App` from a ``module:attribute`` string, as every CLI command does."""

from __future__ import annotations

import importlib
import os
import sys

from orchestrator.app import App


def load_app(spec: str | None) -> App:
    spec = spec or os.environ.get("ORCHESTRATOR_APP")
    if not spec:
        raise ValueError("say which app: MODULE:ATTRIBUTE (e.g. examples.orders:app) or set ORCHESTRATOR_APP")
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import {module_name!r} for app {spec!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ValueError(f"{spec!r} is not an orchestrator.App (found {type(app).__name__})")
    return app
