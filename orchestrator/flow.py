"""Flow control declared on a workflow: concurrency, rate limits, debounce, priority, idempotent starts.

Starts of such a workflow go through the keyed stage, partitioned by the admission key, so the limits hold
across client processes, partitions and processor instances (no per-process counters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.durations import Duration, to_millis
from orchestrator.triggers import KeyExpr


@dataclass(frozen=True)
class Admission:
    """How starts of a workflow are admitted.

    Attributes:
        key: field path or function of the input giving the key limits apply per (e.g. ``"user_id"``);
            None: one key for the whole workflow.
        concurrency: at most this many runs per key at once; excess starts wait in order.
        rate: at most this many starts per ``per`` per key.
        rate_mode: ``"throttle"`` (excess waits its turn) or ``"drop"`` (excess is refused with a reason).
        debounce: a burst of starts for one key within this period starts one run, with the last input.
        debounce_max_wait: a burst never delays its run longer than this.
        priority: function of the input; waiting starts are admitted highest first.
        aging: a waiting start gains one priority point per ``aging`` waited, so low priority is not starved.
    """

    key: KeyExpr | None = None
    concurrency: int | None = None
    rate: int | None = None
    per: Duration = "1s"
    rate_mode: str = "throttle"
    debounce: Duration | None = None
    debounce_max_wait: Duration | None = None
    priority: Callable[[Any], float] | None = None
    aging: Duration = "1m"

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and self.rate < 1:
            raise ValueError("rate must be at least 1")
        if self.rate_mode not in ("throttle", "drop"):
            raise ValueError("rate_mode is 'throttle' or 'drop'")
        for d in (self.per, self.aging, self.debounce, self.debounce_max_wait):
            if d is not None:
                to_millis(d)
