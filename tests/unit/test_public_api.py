"""The public surface changes only on purpose: update this list in the same change, and say why."""

from __future__ import annotations

import importlib
from typing import get_origin

import pytest

import orchestrator
from orchestrator import App, RunHandle, UnknownWorkflowError, WorkflowContext

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


def test_decorators_hand_back_the_function_they_register() -> None:
    """The typed decorators return the function itself (so its signature is what type checkers see), and
    the engine still finds it, with the same definition attributes, under the same names."""
    app = App("api-test")

    @app.step
    def plain(x: int) -> int:
        return x + 1

    @app.step(name="renamed", local=True)
    async def coro(x: int, y: str = "") -> int:
        return x

    @app.workflow
    async def wf(ctx: WorkflowContext, x: int) -> int:
        return x

    @app.workflow(name="other", version="2")
    async def no_input(ctx: WorkflowContext) -> None:
        return None

    assert plain(1) == 2
    assert app.steps["plain"].fn is plain and not app.steps["plain"].is_async
    assert app.steps["plain"].param_hints == (int,) and app.steps["plain"].return_hint is int
    renamed = app.steps["renamed"]
    assert renamed.fn is coro and renamed.is_async and renamed.local and renamed.param_hints == (int, str)
    assert app.step_name(coro) == "renamed"
    assert app.workflows["wf"].fn is wf and app.workflows["wf"].input_hint is int
    assert app.workflows["other"].fn is no_input and app.workflows["other"].version == "2"
    assert app.workflow_name(no_input) == "other"


def test_a_plain_function_workflow_is_still_refused_at_run_time() -> None:
    app = App("api-test")

    def not_async(ctx: WorkflowContext) -> None:
        return None

    with pytest.raises(TypeError, match="must be an async function"):
        app.workflow(not_async)  # type: ignore[arg-type]


def test_get_handle_takes_the_workflow_function_or_its_name() -> None:
    app = App("api-test")

    @app.workflow(name="named")
    async def wf(ctx: WorkflowContext) -> int:
        return 1

    async def unregistered(ctx: WorkflowContext) -> int:
        return 1

    client = app.client()  # connects on first use only
    assert client.get_handle("r", wf).workflow == "named"
    assert client.get_handle("r", "named").workflow == "named"
    assert client.get_handle("r").workflow is None
    with pytest.raises(UnknownWorkflowError):
        client.get_handle("r", unregistered)
    assert get_origin(RunHandle[int]) is RunHandle  # generic at run time too, not only for mypy
