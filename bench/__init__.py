"""Benchmark harness for issue #7: our engine and its peers, same workflow, same machine, same run.

Nothing here is imported by the engine or its tests. ``bench.load`` and ``bench.peers.*_app`` modules use the
standard library only (plus the peer's own SDK), because they run inside each peer's own virtual environment.
"""
