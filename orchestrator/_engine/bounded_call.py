"""Waiting a bounded time for a client call that may never return.

Why: librdkafka (2.16, issues confluentinc/librdkafka#5456 and #5511) can block forever in
``send_offsets_to_transaction``, whatever timeout it is given: it waits for the consumer group's
coordinator through a request whose own timeout is never checked, and after a broker restart the producer
can hold a cached coordinator that is never connected again. Seen in ``test_worker_faults``: after a 30 s
outage the processor's first transaction sat in that call for minutes without an error, the step commands
it had produced were never committed, and every run waited. A blocked C call cannot be interrupted; the only
way on is to stop waiting for it and drop the client it holds (the caller decides how).

`BoundedCaller` runs each call on one daemon thread of its own and waits for it up to a limit. A call that
outlives the limit raises `CallStuckError`; its thread is abandoned (left blocked, as a daemon it does not
keep the process alive; it ends if the call ever returns) and the next call gets a new thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "Future[Any]"] | None
"""A call and the future for its outcome; None tells the thread to end."""


class CallStuckError(Exception):
    """A call did not return within its limit; it still blocks its (abandoned) thread."""


class BoundedCaller:
    """Calls made one at a time, each on this caller's daemon thread, each waited for at most a limit."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] | None = None
        self.abandoned = 0
        """Threads left blocked in a call that did not return in time."""

    def call(self, fn: Callable[[], T], limit_s: float, what: str) -> T:
        """``fn()``'s result (or exception), or CallStuckError if it has not returned after ``limit_s``."""
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(jobs,), daemon=True, name=self._name).start()
        future: Future[T] = Future()
        jobs.put((fn, future))
        try:
            return future.result(limit_s)
        except TimeoutError:
            if future.done():  # fn itself raised a TimeoutError
                raise
        # The thread stays blocked in fn; the None queued behind it ends the thread if fn ever returns.
        jobs.put(None)
        self._jobs = None
        self.abandoned += 1
        raise CallStuckError(f"{what} did not return within {limit_s:.1f} s; abandoned, still blocked")

    def close(self) -> None:
        """End the thread (after the call it runs, if any)."""
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        fn, future = job
        if not future.set_running_or_notify_cancel():
            continue
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, which raises it
            future.set_exception(exc)
        else:
            future.set_result(result)
