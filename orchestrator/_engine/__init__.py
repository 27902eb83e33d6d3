"""Engine internals. Nothing here is public API: import from `orchestrator` instead."""
