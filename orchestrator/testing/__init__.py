"""Testing workflows without a broker: a test environment on a virtual clock, and a history replayer.

``WorkflowEnvironment(app)`` runs an App's workflows in-process on the engine's own core (the decider and
the keyed stage), executes steps with their real functions and retry policies (or fakes), and moves time
only when the test does, skipping ahead while runs just wait for timers. ``Replayer(app)`` re-executes
workflow code against histories exported with ``orchestrator export`` and reports where it would diverge,
so a code change can be checked in CI before it meets open runs.
"""

from orchestrator.testing._environment import WorkflowEnvironment
from orchestrator.testing._handle import WorkflowHandle
from orchestrator.testing._history_file import HistoryFileError, read_events
from orchestrator.testing._replayer import ReplayDivergence, Replayer, ReplayResult

__all__ = [
    "HistoryFileError",
    "ReplayDivergence",
    "ReplayResult",
    "Replayer",
    "WorkflowEnvironment",
    "WorkflowHandle",
    "read_events",
]
