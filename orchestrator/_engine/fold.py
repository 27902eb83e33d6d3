"""Rebuilding a run's state from its history: ``fold`` and ``apply``, now the core's ``evolve``.

Kept at this path so existing imports (audit, tests, other branches) work; the one state machine is
``orchestrator._core.evolve`` (ADR 0009).
"""

from __future__ import annotations

from orchestrator._core.evolve import FoldError, fold
from orchestrator._core.evolve import evolve as apply

__all__ = ["FoldError", "apply", "fold"]
