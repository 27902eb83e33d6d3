"""`BoundedCaller`: results and exceptions pass through; a call that never returns is abandoned."""

from __future__ import annotations

import threading

import pytest

from orchestrator._engine.bounded_call import BoundedCaller, CallStuckError


def test_results_and_exceptions_of_calls_pass_through() -> None:
    caller = BoundedCaller("test-caller")
    try:
        assert caller.call(lambda: 7, 5, "seven") == 7

        def boom() -> None:
            raise ValueError("from the call")

        with pytest.raises(ValueError, match="from the call"):
            caller.call(boom, 5, "boom")
        assert caller.call(lambda: threading.current_thread().name, 5, "name") == "test-caller"
        assert caller.abandoned == 0
    finally:
        caller.close()


def test_a_call_that_does_not_return_is_abandoned_and_the_next_runs_on_a_new_thread() -> None:
    caller = BoundedCaller("test-caller")
    release = threading.Event()
    threads: list[threading.Thread] = []

    def stuck() -> str:
        threads.append(threading.current_thread())
        release.wait()
        return "late"

    try:
        with pytest.raises(CallStuckError, match="send_offsets_to_transaction did not return"):
            caller.call(stuck, 0.05, "send_offsets_to_transaction")
        assert caller.abandoned == 1
        assert caller.call(threading.current_thread, 5, "thread") is not threads[0]
    finally:
        release.set()
        caller.close()
    threads[0].join(5)  # the abandoned thread ends once its call returns
    assert not threads[0].is_alive()


def test_a_timeout_raised_by_the_call_itself_is_not_taken_for_a_stuck_call() -> None:
    caller = BoundedCaller("test-caller")

    def times_out() -> None:
        raise TimeoutError("the call's own")

    try:
        with pytest.raises(TimeoutError, match="the call's own"):
            caller.call(times_out, 5, "times out")
        assert caller.abandoned == 0
    finally:
        caller.close()
