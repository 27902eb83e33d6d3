"""Peer systems, each in its own virtual environment under ``~/.cache/orchestrator-bench/envs``.

``*_app.py`` modules import only the peer's own SDK (plus ``bench.load``), since they run in that peer's
environment; the classes in ``bench.peers.runners`` bring the peers up and down from the harness process.
"""
