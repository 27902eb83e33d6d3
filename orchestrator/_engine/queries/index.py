"""The run indexes of a run partition store, and the queries that read them (ADR 0016).

``RunIndexer`` derives, from a run's state, a small summary (what a run list shows, JSON under
``x/<run_id>``) and the index keys of that summary (layout in ``orchestrator._engine.store``'s
docstring, frozen by ``tests/unit/test_run_index.py``). The store writes both in the same batch as the
state. ``list_partition`` and ``count_partition`` answer a ``RunFilter`` from one store: they walk the
most selective index the filter names, newest first, and check the rest of the filter on each summary.

Order: newest created first, ties by run id; a cursor is the (created_ms, run_id) of the last row of a
page, the same for every partition, so pages merge across partitions and processors.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from typing import Any

from orchestrator._engine import wire
from orchestrator._engine.queries.model import RunFilter, RunSummary
from orchestrator._engine.state import RunState, decode_state
from orchestrator._engine.store import INDEX_PREFIX, SUMMARY_PREFIX, PartitionStore, StoreClosedError

log = logging.getLogger(__name__)

INDEX_VERSION = 1
"""Bumped whenever the index layout or the summary changes: stores of another version rebuild on open."""

_INV = struct.Struct(">Q")
_MAX = (1 << 64) - 1
ALL = INDEX_PREFIX + b"c/"
BY_WORKFLOW = INDEX_PREFIX + b"w/"
BY_STATUS = INDEX_PREFIX + b"s/"
BY_ERROR = INDEX_PREFIX + b"e/"
BY_TAG = INDEX_PREFIX + b"t/"
BY_END = INDEX_PREFIX + b"n/"
_ENDED = frozenset({"completed", "failed", "cancelled"})
UNREADABLE = "unreadable"
"""Status shown for a run whose stored state this code cannot decode (a newer schema during a rolling
upgrade, a status it does not know): the run stays listable, and its processor parks it when it next acts."""
MAX_ERROR_MESSAGE = 300
"""Characters of a run's error message kept in its summary (a list shows the start of it)."""


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""One encoder for every summary: ``json.dumps`` with options builds a new one per call (twice the cost)."""


def inv(ms: int) -> bytes:
    """``ms`` as 8 bytes that sort newest first."""
    return _INV.pack(_MAX - max(ms, 0))


def _clean(text: str) -> bytes:
    return text.replace("\x00", "").encode()


def summary_of(state: RunState) -> bytes:
    """What a run list shows of a run, and what its index entries are computed from.

    Two compact JSON lists on one line each: first what the index keys are made of (workflow, status,
    created, ended, error type, tags), then what only a list shows (updated, error message). Most
    transitions change only the second line, and the store then writes the summary and no index key
    (``RunIndexer.same_keys``): that is what keeps the index's cost per transition small.
    """
    ended = state.updated_ms if state.status in _ENDED else None
    keyed = _JSON([state.workflow, str(state.status), state.created_ms, ended, state.error_type, state.tags])
    message = state.error_message
    shown = (
        f'[{state.updated_ms},""]' if not message else _JSON([state.updated_ms, message[:MAX_ERROR_MESSAGE]])
    )
    return f"{keyed}\n{shown}".encode()


def parse_summary(run_id: str, raw: bytes, partition: int = -1) -> RunSummary:
    keyed, _, shown = raw.partition(b"\n")
    workflow, status, created, ended, error_type, tags = json.loads(keyed)
    updated, error_message = json.loads(shown)
    return RunSummary(
        run_id, workflow, status, created, updated, ended, error_type, error_message, tags, partition
    )


class RunIndexer:
    """The ``store.Indexer`` of run stores."""

    version = INDEX_VERSION

    def __init__(self) -> None:
        self._warned = False

    def summary(self, state_bytes: bytes) -> bytes:
        """The summary of a stored state; a placeholder (status ``unreadable``) when it does not decode.

        Never raises: restore and commit call it for every run, and one undecodable state must not stop a
        whole partition (an exception here would kill the partition's assignment on every restart), where
        before run queries restore only copied bytes and the run was parked alone when an event reached it.
        """
        try:
            return summary_of(decode_state(state_bytes))
        except Exception as exc:  # noqa: BLE001 - any decode failure: schema id, unknown status, field
            return self._unreadable(state_bytes, exc)

    def _unreadable(self, state_bytes: bytes, exc: Exception) -> bytes:
        """What can still be read of an undecodable state (its workflow and times, when the Avro record
        itself decodes), as status ``unreadable``. Logged once per store: a rolling upgrade can make every
        run of a partition unreadable at once."""
        if not self._warned:
            self._warned = True
            log.warning("a stored run state does not decode; listed as %r: %s", UNREADABLE, exc)
        workflow, created, updated = "", 0, 0
        try:
            _, rec = wire.decode(state_bytes, expected=wire.RUN_STATE)
            workflow = str(rec.get("workflow") or "")
            created = int(rec.get("created_ms") or 0)
            updated = int(rec.get("updated_ms") or created)
        except Exception:  # noqa: BLE001, S110 - the bytes say nothing more: placeholders
            pass
        keyed = _JSON([workflow, UNREADABLE, created, None, "", {}])
        return f"{keyed}\n{_JSON([updated, str(exc)[:MAX_ERROR_MESSAGE]])}".encode()

    def same_keys(self, old: bytes, new: bytes) -> bool:
        """Whether two summaries of a run have the same index keys (their first lines are equal)."""
        return old.partition(b"\n")[0] == new.partition(b"\n")[0]

    def index_keys(self, run_id: bytes, summary: bytes) -> list[bytes]:
        workflow, status, created, ended, error_type, tags = json.loads(summary.partition(b"\n")[0])
        at = inv(created) + run_id
        keys = [
            ALL + at,
            BY_WORKFLOW + _clean(workflow) + b"\x00" + at,
            BY_STATUS + _clean(status) + b"\x00" + at,
        ]
        if error_type:
            keys.append(BY_ERROR + _clean(error_type) + b"\x00" + at)
        for key, value in tags.items():
            keys.append(BY_TAG + _clean(f"{key}={value}") + b"\x00" + at)
        if ended is not None:
            keys.append(BY_END + inv(ended) + run_id)
        return keys


# -- cursors -------------------------------------------------------------------------------------------------
def encode_cursor(created_ms: int, run_id: str) -> str:
    """Opaque to callers: where the next page starts (after this run, in list order)."""
    return base64.urlsafe_b64encode(json.dumps([created_ms, run_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        created, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(created), str(run_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a run list cursor: {cursor!r}") from exc


def order_key(run: RunSummary) -> tuple[int, str]:
    """The list order: newest created first, then by run id (as the index keys sort)."""
    return -run.created_ms, run.run_id


# -- queries on one store ------------------------------------------------------------------------------------
_CLOSED_CHECK = 1_000
"""Index entries a walk steps between two looks at the store's closed flag: ``close`` (a rebalance's
revoke) waits for the reads in progress, and a count walks every matching entry (seconds at 1M runs)."""

_PROBE = 50_000
"""Most index entries stepped per criterion when looking for the smallest index of a filter."""


def criteria(flt: RunFilter) -> list[bytes]:
    """The index prefixes of every criterion of ``flt`` that an index answers (each ends with NUL)."""
    out = [BY_TAG + _clean(f"{k}={v}") + b"\x00" for k, v in sorted(flt.tags.items())]
    if flt.error_type:
        out.append(BY_ERROR + _clean(flt.error_type) + b"\x00")
    if flt.workflow:
        out.append(BY_WORKFLOW + _clean(flt.workflow) + b"\x00")
    if flt.status:
        out.append(BY_STATUS + _clean(flt.status) + b"\x00")
    return out


def matches(flt: RunFilter, run: RunSummary) -> bool:
    return (
        (flt.workflow is None or run.workflow == flt.workflow)
        and (flt.status is None or run.status == flt.status)
        and (flt.error_type is None or run.error_type == flt.error_type)
        and all(run.tags.get(k) == v for k, v in flt.tags.items())
        and (flt.since_ms is None or run.created_ms >= flt.since_ms)
        and (flt.until_ms is None or run.created_ms < flt.until_ms)
        and (flt.run_id_prefix is None or run.run_id.startswith(flt.run_id_prefix))
    )


def smallest(db: Any, prefixes: list[bytes]) -> int:
    """Index (into ``prefixes``) of the prefix with the fewest entries, found by stepping through all of
    them in lockstep until one ends: the cost is the smallest size times the number of criteria (keys
    only, about a microsecond each), capped at ``_PROBE`` steps (then the first one is taken)."""
    if len(prefixes) == 1:
        return 0
    iters = []
    try:
        for prefix in prefixes:
            it = db.iter()
            it.seek(prefix)
            iters.append(it)
        for _ in range(_PROBE):
            for i, (it, prefix) in enumerate(zip(iters, prefixes, strict=True)):
                if not it.valid() or not it.key().startswith(prefix):
                    return i
                it.next()
        return 0
    finally:
        del iters


def _walk(store: PartitionStore, flt: RunFilter, after: tuple[int, str] | None, summaries: bool) -> Any:
    """Yield (run id, summary or None) of the runs matching ``flt`` in list order, after ``after``.

    Walks the smallest index the filter names (``smallest``; all runs when it names none) and checks the other
    criteria by looking up the run's key in their indexes (the bloom filters answer most misses without
    reading a block): a run is read only when it matches, and not at all for a count. A commit's index
    changes are one atomic write batch, so a walk never sees half of one.
    """
    with store.reading() as db:
        prefixes = criteria(flt)
        prefix = prefixes.pop(smallest(db, prefixes)) if prefixes else ALL
        others = prefixes
        start = prefix
        if flt.until_ms is not None:
            start = max(start, prefix + inv(flt.until_ms - 1))
        if after is not None:
            start = max(start, prefix + inv(after[0]) + after[1].encode() + b"\x00")
        stop = prefix + inv(flt.since_ms) + b"\xff" if flt.since_ms is not None else None
        wanted = flt.run_id_prefix.encode() if flt.run_id_prefix else b""
        cut = len(prefix)
        it = db.iter()
        stepped = 0
        try:
            it.seek(start)
            while it.valid():
                stepped += 1
                if stepped % _CLOSED_CHECK == 0 and store.closed:
                    raise StoreClosedError(f"store of partition {store.partition} closed during a query")
                key = it.key()
                if not key.startswith(prefix) or (stop is not None and key > stop):
                    break
                at = key[cut:]
                run_id = at[8:]
                if run_id.startswith(wanted) and all(db.get(p + at) is not None for p in others):
                    if not summaries:
                        yield run_id, None
                    else:
                        raw = db.get(SUMMARY_PREFIX + run_id)
                        if isinstance(raw, bytes):
                            run = parse_summary(run_id.decode(), raw, store.partition)
                            # A commit may have replaced this entry since the walk stepped onto it (the
                            # walk is no snapshot): the summary is the truth, list the run only under it.
                            if matches(flt, run) and inv(run.created_ms) == at[:8]:
                                yield run_id, run
                it.next()
        finally:
            del it


def list_partition(
    store: PartitionStore, flt: RunFilter, after: tuple[int, str] | None, limit: int
) -> tuple[list[RunSummary], bool]:
    """Up to ``limit`` runs of ``store`` matching ``flt`` after the cursor position ``after``, and whether
    there are more. StoreClosedError if the store was closed (its partition moved)."""
    runs: list[RunSummary] = []
    for _, run in _walk(store, flt, after, summaries=True):
        if len(runs) == limit:
            return runs, True
        runs.append(run)
    return runs, False


def count_partition(store: PartitionStore, flt: RunFilter) -> int:
    return sum(1 for _ in _walk(store, flt, None, summaries=False))
