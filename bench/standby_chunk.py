"""How long ``Standbys.release`` can wait behind the standby thread: one apply chunk (ADR 0024).

``python -m bench.standby_chunk``: ten chunks of ``APPLY_CHUNK`` realistic completed run states (the
generator of ``bench.run_queries``) applied with ``PartitionStore.restore_batch`` and the run indexer, as
the standby thread applies them under its lock; prints the median and the longest.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from bench import run_queries
from orchestrator._engine import state as st
from orchestrator._engine.processor.standby import APPLY_CHUNK
from orchestrator._engine.queries.index import RunIndexer
from orchestrator._engine.store import PartitionStore, run_key


def main(chunks: int = 10) -> None:
    rng = random.Random(13)
    now = int(time.time() * 1000)
    template = run_queries._template()
    rows = []
    for i in range(APPLY_CHUNK * chunks):
        state = run_queries._run(rng, i, now, template)
        rows.append((run_key(state.run_id), st.encode_state(state)))
    times = []
    with tempfile.TemporaryDirectory() as d:
        store = PartitionStore(Path(d) / "p0", 0, RunIndexer())
        try:
            for c in range(chunks):
                chunk: list[tuple[bytes, bytes | None]] = list(rows[c * APPLY_CHUNK : (c + 1) * APPLY_CHUNK])
                t0 = time.perf_counter()
                store.restore_batch(chunk, (c + 1) * APPLY_CHUNK)
                times.append(time.perf_counter() - t0)
        finally:
            store.close()
    print(
        f"apply chunk of {APPLY_CHUNK} run states: median {statistics.median(times) * 1000:.0f} ms, "
        f"longest {max(times) * 1000:.0f} ms ({chunks} chunks)"
    )


if __name__ == "__main__":
    main()
