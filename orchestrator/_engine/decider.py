"""The decider as the processor uses it: the pure core's ``Decider`` wired to the wire format.

The state machine lives in ``orchestrator._core`` (``decide``, ``evolve``, ``commands``); this module keeps
the old import path working and gives the decider the one thing it cannot do purely: encode the step
command an admitted step carries inside its ``AdmitRequest``.
"""

from __future__ import annotations

import random

from orchestrator._core.commands import outcome_of
from orchestrator._core.decide import (
    PARK_COMPENSATION_FAILED,
    PARK_INTERNAL_ERROR,
    PARK_NON_DETERMINISM,
    PARK_UNKNOWN_WORKFLOW,
    PARK_WORKFLOW_ERROR,
    timers_of,
)
from orchestrator._core.decide import Decider as CoreDecider
from orchestrator._core.effects import Effects
from orchestrator._core.formats import idempotency_key, routing_key
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.records import encode_command
from orchestrator.app import App

__all__ = [
    "PARK_COMPENSATION_FAILED",
    "PARK_INTERNAL_ERROR",
    "PARK_NON_DETERMINISM",
    "PARK_UNKNOWN_WORKFLOW",
    "PARK_WORKFLOW_ERROR",
    "Decider",
    "Effects",
    "idempotency_key",
    "outcome_of",
    "routing_key",
    "timers_of",
]


class Decider(CoreDecider):
    """``Decider(app, cache=None, rng=None)``: the core decider, encoding commands in the wire format."""

    def __init__(
        self, app: App, cache: InstanceCache | None = None, rng: random.Random | None = None
    ) -> None:
        super().__init__(app, cache, rng, encode_command=encode_command)
