"""The public surface changes only on purpose: update this list in the same change, and say why."""

from __future__ import annotations

import importlib

import orchestrator

EXPECTED = [
    "Admission",
    "App",
    "Client",
    "DataConverter",
    "EventSource",
    "JsonConverter",
    "NonDeterminismError",
    "OrchestratorError",
    "PayloadCodec",
    "PayloadConverter",
    "PayloadError",
    "PayloadTooLargeError",
    "ProcessorFencedError",
    "ReceivedEvent",
    "RetryPolicy",
    "RunDescription",
    "RunFailedError",
    "RunHandle",
    "RunTimeoutError",
    "Schedule",
    "SchemaError",
    "Settings",
    "StepFailedError",
    "StepInfo",
    "StepView",
    "TerminalError",
    "Trigger",
    "UnknownStepError",
    "UnknownWorkflowError",
    "ValueFormat",
    "WorkflowContext",
    "__version__",
    "step_info",
]


def test_all_is_pinned() -> None:
    assert orchestrator.__all__ == EXPECTED


def test_all_is_sorted_and_unique() -> None:
    assert orchestrator.__all__ == sorted(set(orchestrator.__all__))


def test_everything_exported_is_importable() -> None:
    module = importlib.import_module("orchestrator")
    for name in EXPECTED:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from orchestrator import *", namespace)
    assert set(EXPECTED) <= set(namespace)


def test_errors_share_one_root() -> None:
    errors = [n for n in EXPECTED if n.endswith("Error")]
    for name in errors:
        assert issubclass(getattr(orchestrator, name), orchestrator.OrchestratorError), name
    assert issubclass(orchestrator.RunTimeoutError, TimeoutError)


def test_version() -> None:
    assert orchestrator.__version__ == "0.1.0"
