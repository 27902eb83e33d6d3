"""The OpenTelemetry SDK's id generator for the engine: how a processor's span gets the ids derived from its
run (``tracing``), which the OpenTelemetry API has no way to set. SDK only: imported where the SDK is set up.
"""

from __future__ import annotations

import random

from opentelemetry.sdk.trace.id_generator import IdGenerator

from orchestrator._engine import tracing


class RunIds(IdGenerator):
    """The SDK's id generator, giving a span the ids `tracing.pending_ids` holds (the processor's spans,
    whose ids are derived from their run), and random ids to every other span."""

    def generate_span_id(self) -> int:
        pending = tracing.pending_ids.get()
        if pending is not None:
            return pending[1]
        return random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        pending = tracing.pending_ids.get()
        if pending is not None:
            return pending[0]
        return random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return False  # run traces' ids are hashes: uniform, but not random (W3C level 2 "random" flag)
