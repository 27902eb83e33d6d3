"""How long one transaction may spend handling its batch, and how much local step work one input may do.

Both bound the work inside one Kafka transaction: a transaction older than the producer's
``transaction.timeout.ms`` is aborted by the coordinator, and an aborted batch that takes as long again is
aborted again, forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOCAL_STEPS_PER_INPUT = 64
"""Local step attempts folded in while handling one input; the result of the next goes through the inbox,
so a workflow looping over local steps makes durable progress and cannot hold a batch forever."""

BATCH_TIME_SHARE = 0.5
"""Share of the producer's ``transaction.timeout.ms`` a transaction may spend handling its batch (local
steps are what can make that long). Past it, local step results go through the inbox instead of being
folded in, and the inputs not handled yet are left for the next transaction; so a batch of slow local steps
commits in time instead of being aborted by the coordinator and retried forever."""


class HandlingTime:
    """The open transaction's handling deadline, on a clock tests can replace (``clock``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = float("inf")  # past it, the open transaction takes no more work

    def start(self, transaction_timeout_s: float) -> None:
        """A transaction begins: it may handle records for its share of ``transaction_timeout_s``."""
        self.deadline = self.clock() + BATCH_TIME_SHARE * transaction_timeout_s

    def over(self) -> bool:
        return self.clock() >= self.deadline
