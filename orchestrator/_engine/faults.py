"""Riding out Kafka faults: call again what librdkafka marks retriable, stop only on what it marks fatal.

Why: a broker restart, a leader move or a coordinator that is still loading is routine, and every call the
processor makes can fail with one of them (``init_transactions`` at start-up, ``commit_transaction`` and
``abort_transaction`` that time out with "retry call to resume", ``committed`` while the group coordinator is
away). Before, any such error raised out of the loop and the processor exited, leaving every run it owned
stuck until someone restarted it. Kafka Streams gives a task ``task.timeout.ms`` of such retries and never
exits the thread for a broker restart; the processor keeps retrying for as long as it runs, logging each
fault once when it starts and once when it ends (not once per retry, which would flood the log during a
30 s outage).

librdkafka's taxonomy (``KafkaError``): ``fatal()`` - the instance must go (fenced);
``txn_requires_abort()`` - abort the transaction, rewind, reprocess; ``retriable()`` - call again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

T = TypeVar("T")

_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.CONCURRENT_TRANSACTIONS,
    }
)
"""Errors of a cluster that is restarting or moving leaders, whatever the call; some calls (admin requests,
``committed``) report them without setting ``retriable()``."""


REMIND_S = 30.0
"""While a fault lasts, how often it is logged again."""


class Stopping(Exception):
    """The processor was asked to stop while it waited out a fault: unwind, do not report a failure."""


def error_of(exc: BaseException) -> KafkaError | None:
    """The KafkaError behind a KafkaException (or behind an exception it caused), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KafkaException) and seen.args and isinstance(seen.args[0], KafkaError):
            return seen.args[0]
        seen = seen.__cause__
    return None


def is_fatal(err: KafkaError | None) -> bool:
    """The instance must stop: librdkafka says so, or the broker says another producer has our id."""
    return err is not None and (
        err.fatal() or err.code() in (KafkaError._FATAL, KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
    )


def is_transient(err: KafkaError | None) -> bool:
    """Calling again later may succeed (and nothing needs undoing first)."""
    return (
        err is not None
        and not is_fatal(err)
        and not err.txn_requires_abort()
        and (err.retriable() or err.code() in _TRANSIENT_CODES)
    )


class FaultLog:
    """Logs a fault once per episode: a warning when it starts, one line with its length when it ends."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._open: dict[str, tuple[float, int, float]] = {}  # what -> (since, occurrences, last reminder)

    def fault(self, what: str, detail: object) -> None:
        """Record one occurrence of ``what``; the first of an episode is logged, then one reminder with the
        latest error every ``REMIND_S`` while it lasts (an operator must see that it is still going on)."""
        now = time.monotonic()
        since, count, reminded = self._open.get(what, (now, 0, now))
        if count == 0:
            self._log.warning("%s failed, retrying until it succeeds: %s", what, detail)
        elif now - reminded >= REMIND_S:
            self._log.warning(
                "%s still failing after %d attempts over %.0f s, retrying: %s",
                what,
                count + 1,
                now - since,
                detail,
            )
            reminded = now
        self._open[what] = (since, count + 1, reminded)

    def recovered(self, what: str) -> None:
        """``what`` succeeded: close its episode (logged only if there was one)."""
        episode = self._open.pop(what, None)
        if episode is not None:
            since, count, _ = episode
            self._log.warning(
                "%s succeeded again after %d failed attempts over %.1f s",
                what,
                count,
                time.monotonic() - since,
            )

    def active(self) -> list[str]:
        return sorted(self._open)


class Retrier:
    """Calls an operation until it succeeds, waiting out transient faults with a capped backoff.

    ``running`` is asked between attempts; once it says no, ``Stopping`` is raised so that a SIGTERM during
    an outage ends the process instead of waiting for the broker.
    """

    def __init__(
        self,
        faults: FaultLog,
        running: Callable[[], bool],
        *,
        first_backoff: float = 0.05,
        max_backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.faults = faults
        self.running = running
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.sleep = sleep

    def call(
        self,
        what: str,
        op: Callable[[], T],
        retry_if: Callable[[BaseException], bool] = lambda exc: is_transient(error_of(exc)),
        give_up_at: float | None = None,
    ) -> T:
        """``op()``, again and again while it raises an exception ``retry_if`` accepts; others propagate.

        ``give_up_at`` (a ``time.monotonic()`` instant): past it, the last exception propagates even if it
        is retriable. For calls inside a transaction: once the transaction is older than the producer's
        ``transaction.timeout.ms`` the coordinator aborts it anyway, and waiting longer can deadlock (the
        group cannot finish a rebalance while this instance does not poll its consumer).
        """
        backoff = self.first_backoff
        while True:
            try:
                result = op()
            except Exception as exc:
                if not retry_if(exc) or (give_up_at is not None and time.monotonic() >= give_up_at):
                    raise
                self.faults.fault(what, exc)
                if not self.running():
                    raise Stopping(f"stopped while {what} was failing: {exc}") from exc
                self.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self.faults.recovered(what)
            return result
