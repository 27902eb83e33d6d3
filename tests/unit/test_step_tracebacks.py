"""A failed attempt's traceback: formatted where the step ran, bounded, readable from every older event
schema, and invisible to the fold (the run's state does not change with it)."""

from __future__ import annotations

import io
import json
import traceback
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orchestrator import App, TerminalError
from orchestrator._core import evolve
from orchestrator._engine import attempts, tracebacks, wire
from orchestrator._engine.events import (
    Event,
    RunStarted,
    StepFailed,
    StepScheduled,
    decode_event,
    encode_event,
    event_record,
)
from orchestrator._engine.local_steps import LocalSteps
from orchestrator._engine.records import StepCommand
from orchestrator._engine.state import encode_state

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
app = App("tracebacks")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _recurse(n: int) -> None:
    if n == 0:
        raise RuntimeError("bottom of the recursion")
    _recurse(n - 1)


def _ping(n: int) -> None:  # ping and pong alternate, so Python cannot fold the frames as repeats
    if n == 0:
        raise RuntimeError("bottom of the recursion")
    _pong(n - 1)


def _pong(n: int) -> None:
    _ping(n)


def innermost_user_function() -> None:
    raise ValueError("x" * 50_000)


def _caught(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def _utf8(text: str) -> int:
    return len(text.encode())


# -- bounding --------------------------------------------------------------------------------------------
def test_a_short_traceback_is_kept_whole_with_the_function_and_line() -> None:
    exc = _caught(_recurse, 2)
    text = tracebacks.format_bounded(exc)
    assert text.startswith("Traceback (most recent call last):\n")
    assert "in _recurse" in text and 'raise RuntimeError("bottom of the recursion")' in text
    assert text.endswith("RuntimeError: bottom of the recursion\n")
    assert "[traceback cut" not in text


def test_an_exception_never_raised_has_no_traceback() -> None:
    assert tracebacks.format_bounded(ValueError("made, not raised")) == ""


def test_a_deep_traceback_keeps_its_innermost_frames_and_says_it_was_cut() -> None:
    exc = _caught(_ping, 200)  # 400 frames, about 40 KB printed
    full = "".join(traceback.format_exception(exc))
    assert _utf8(full) > tracebacks.LIMIT_BYTES
    text = tracebacks.format_bounded(exc)
    assert _utf8(text) <= tracebacks.LIMIT_BYTES
    assert text.startswith("[traceback cut: the first ")
    assert text.endswith("RuntimeError: bottom of the recursion\n")
    assert 'raise RuntimeError("bottom of the recursion")' in text  # the innermost frame
    assert "in _caught" in full and "in _caught" not in text  # the outermost frame went


def test_only_the_innermost_frames_are_formatted_and_the_cut_is_said() -> None:
    exc = _caught(_recurse, 600)  # folded by Python to a few lines, but 600 frames to walk
    text = tracebacks.format_bounded(exc)
    frames = 600 + 2  # _caught and the first _recurse call
    assert text.startswith(
        f"[traceback cut: the outermost {frames - tracebacks.MAX_FRAMES} of {frames} frames]\n"
    )
    assert "in _caught" not in text  # the outermost frame was not formatted
    assert text.endswith("RuntimeError: bottom of the recursion\n")


def test_a_huge_message_cannot_push_every_frame_out() -> None:
    exc = _caught(innermost_user_function)
    text = tracebacks.format_bounded(exc)
    assert _utf8(text) <= tracebacks.LIMIT_BYTES
    assert "in innermost_user_function" in text
    assert "bytes cut]" in text


@pytest.mark.parametrize("limit", [200, 1000, 4096, 8192])
def test_bound_never_exceeds_the_limit_even_across_multibyte_characters(limit: int) -> None:
    text = "".join(f"ligne {i} é€𝄞 ünïcode\n" for i in range(2000))
    got = tracebacks.bound(text, limit)
    assert _utf8(got) <= limit
    assert got.endswith("ligne 1999 é€𝄞 ünïcode\n")
    got.encode()  # valid UTF-8, no split character


def test_a_lone_surrogate_is_escaped_not_raised_on() -> None:
    exc = _raised(ValueError("bad file name \udcff"))
    text = tracebacks.format_bounded(exc)
    assert "\\udcff" in text
    encode_event(Event("e", "r", "wf", 1, StepFailed(0, 1, "ValueError", "m", True, 1, 2, "", text)))


def test_a_chained_exception_keeps_its_cause() -> None:
    def wrap() -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("lookup failed") from exc

    text = tracebacks.format_bounded(_caught(wrap))
    assert "KeyError: 'missing'" in text and "direct cause" in text
    assert text.endswith("RuntimeError: lookup failed\n")


# -- the attempt's report ----------------------------------------------------------------------------------
def _cmd(step: str) -> StepCommand:
    return StepCommand(
        run_id="r",
        workflow="wf",
        position=1,
        step=step,
        attempt=1,
        args=app.data.encode([3]),
        idempotency_key=f"r/1/{step}",
        scheduled_ms=0,
    )


@app.step(local=True)
def plain_breaks(x: int) -> int:
    raise ValueError(f"plain {x}")


@app.step(local=True)
async def async_refuses(x: int) -> int:
    raise TerminalError(f"refused {x}")


def test_retryable_and_terminal_failures_both_carry_the_traceback() -> None:
    retryable = attempts.failed(_cmd("s"), _raised(ValueError("v")), 1, "w")
    terminal = attempts.failed(_cmd("s"), _raised(TerminalError("t")), 1, "w")
    assert retryable.retryable and "ValueError: v" in retryable.traceback
    assert not terminal.retryable and "TerminalError: t" in terminal.traceback


def test_local_steps_record_the_users_frame_plain_and_async() -> None:
    runner = LocalSteps(app, "processor:t")
    try:
        plain = runner.run(_cmd("plain_breaks")).body
        refused = runner.run(_cmd("async_refuses")).body
    finally:
        runner.close()
    assert isinstance(plain, StepFailed) and plain.retryable
    assert "in plain_breaks" in plain.traceback and 'raise ValueError(f"plain {x}")' in plain.traceback
    assert isinstance(refused, StepFailed) and not refused.retryable
    assert "in async_refuses" in refused.traceback and "TerminalError: refused 3" in refused.traceback


def test_the_traceback_survives_the_wire_with_the_current_schema() -> None:
    body = attempts.failed(_cmd("s"), _caught(_recurse, 3), 1, "w")
    data = encode_event(Event("e", "r", "wf", 1, body, 4))
    assert data[1:5] == wire.registry().current[wire.EVENT].to_bytes(4, "big")
    assert decode_event(data).body == body


# -- older histories -------------------------------------------------------------------------------------
def _event_ids_before_v6() -> list[int]:
    registry = json.loads((SCHEMAS / "registry.json").read_text())
    current = registry["current"][wire.EVENT]
    events = [int(sid) for sid, e in registry["schemas"].items() if e["name"] == wire.EVENT]
    return [sid for sid in events if sid != current]


def test_the_old_event_schemas_are_the_ones_the_task_names() -> None:
    assert _event_ids_before_v6() == [1, 6, 9, 10, 11]


@pytest.mark.parametrize("sid", _event_ids_before_v6())
def test_a_step_failed_written_before_v6_decodes_with_no_traceback(sid: int) -> None:
    body = StepFailed(2, 3, "ValueError", "old", True, 10, 20, "w-old", "never written")
    record = event_record(Event("e-1", "r-1", "wf", 5, body, 7))
    del record["body"][1]["traceback"]  # as every writer before event-v6 wrote it
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, wire.registry().by_id[sid], record)
    event = decode_event(b"\x00" + sid.to_bytes(4, "big") + buf.getvalue())
    assert event.body == StepFailed(2, 3, "ValueError", "old", True, 10, 20, "w-old", "")
    assert event.seq == 7


# -- the fold ignores it ---------------------------------------------------------------------------------
def _history(traceback: str) -> list[Event]:
    return [
        Event("e0", "r", "wf", 1_000, RunStarted(b"[]"), 0),
        Event("e1", "r", "wf", 1_001, StepScheduled(0, "s", "default", 1, b"[]", "r/0/s"), 1),
        Event("e2", "r", "wf", 1_050, StepFailed(0, 1, "E", "v", False, 1_010, 1_040, "w", traceback), 2),
    ]


def test_the_fold_and_the_stored_state_do_not_change_with_the_traceback() -> None:
    with_tb = evolve.fold(_history("Traceback (most recent call last):\n" + "  frame\n" * 500))
    without = evolve.fold(_history(""))
    assert with_tb is not None and without is not None
    assert with_tb == without
    assert encode_state(with_tb) == encode_state(without)
