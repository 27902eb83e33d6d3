"""Log a recurring trouble (broker unreachable, commits failing) once when it starts and once when it ends.

Why: while a broker is down every client call fails, several times a second. Logging each failure buries
the one line an operator needs ("broker unreachable since 12:01:07: ...") and the one that says it is
over ("recovered after 31.2 s, 148 errors").
"""

from __future__ import annotations

import logging
import threading
import time


class Episode:
    """One kind of trouble; `failed` and `recovered` may be called from any thread."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._lock = threading.Lock()
        self._since: float | None = None
        self._errors = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, detail: object) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
                self._errors = 0
            self._errors += 1
        if first:
            self._log.warning(
                "%s: %s (retrying; further errors are counted, not logged, until it recovers)",
                self._what,
                detail,
            )

    def recovered(self) -> None:
        if self._since is None:  # the common case, once per record: no lock needed to see nothing is wrong
            return
        with self._lock:
            if self._since is None:
                return
            seconds, errors = time.monotonic() - self._since, self._errors
            self._since = None
        self._log.warning("%s: recovered after %.1f s (%d errors)", self._what, seconds, errors)
