"""The records that are not run events: step commands, run outcomes, dead letters."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator._core.effects import RunOutcome, StepCommand
from orchestrator._engine import wire

__all__ = [
    "DeadLetter",
    "RunOutcome",
    "StepCommand",
    "decode_command",
    "decode_dead_letter",
    "decode_outcome",
    "encode_command",
    "encode_dead_letter",
    "encode_outcome",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    error_type: str
    reason: str
    timestamp_ms: int
    component: str = ""


def encode_command(cmd: StepCommand) -> bytes:
    return wire.encoder(wire.STEP_COMMAND)(cmd)


def decode_command(data: bytes | None) -> StepCommand:
    return StepCommand(**wire.decode(data, expected=wire.STEP_COMMAND)[1])


def encode_outcome(outcome: RunOutcome) -> bytes:
    return wire.encoder(wire.RUN_OUTCOME)(outcome)


def decode_outcome(data: bytes | None) -> RunOutcome:
    return RunOutcome(**wire.decode(data, expected=wire.RUN_OUTCOME)[1])


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return wire.encoder(wire.DEAD_LETTER)(letter)


def decode_dead_letter(data: bytes | None) -> DeadLetter:
    return DeadLetter(**wire.decode(data, expected=wire.DEAD_LETTER)[1])
