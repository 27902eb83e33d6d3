"""Optional integrations with other frameworks; each module imports its framework and needs its extra.

``orchestrator.integrations.faust`` needs ``pip install kafka-orchestrator[faust]``.
"""
