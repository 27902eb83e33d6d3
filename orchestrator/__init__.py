"""Durable workflows on Apache Kafka.

The public surface is what this module exports; everything under ``orchestrator._engine`` may change
without notice.
"""

from orchestrator.app import App
from orchestrator.client import Client, RunDescription, RunHandle, StepView
from orchestrator.context import ReceivedEvent, StepInfo, WorkflowContext, step_info
from orchestrator.converter import DataConverter, JsonConverter, PayloadCodec, PayloadConverter
from orchestrator.errors import (
    NonDeterminismError,
    OrchestratorError,
    PayloadError,
    PayloadTooLargeError,
    ProcessorFencedError,
    RunFailedError,
    RunTimeoutError,
    SchemaError,
    StepFailedError,
    TerminalError,
    UnknownStepError,
    UnknownWorkflowError,
)
from orchestrator.flow import Admission
from orchestrator.retry import RetryPolicy
from orchestrator.settings import Settings
from orchestrator.triggers import EventSource, Schedule, Trigger, ValueFormat

__version__ = "0.1.0"

__all__ = [
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
