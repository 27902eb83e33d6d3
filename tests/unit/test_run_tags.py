"""Run tags (``ctx.set_tags``): recorded as ``TagsSet``, folded into the state, stored in run-state-v3,
bounded (a violation parks the run), and older states and histories still decode."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from orchestrator import App, WorkflowContext
from orchestrator._core.tags import MAX_TAGS, tags_error
from orchestrator._engine import state as st
from orchestrator._engine import wire
from orchestrator._engine.events import TagsSet, decode_event
from tests.unit.core_driver import Driver, assert_fold_matches, no_leaked_workflow_loops  # noqa: F401

app = App("tags-test")


@app.step()
def noop(x: int) -> int:
    return x


@app.workflow
async def tagged(ctx: WorkflowContext, plan: str) -> str:
    ctx.set_tags(customer="c-42", plan=plan)
    await ctx.step(noop, 1)
    ctx.set_tags(plan="pro", stage="after")  # plan changes, stage is new, customer stays
    await ctx.step(noop, 2)
    return "ok"


@app.workflow
async def too_many(ctx: WorkflowContext) -> None:
    ctx.set_tags(**{f"k{i}": "v" for i in range(MAX_TAGS + 1)})
    await ctx.step(noop, 1)


@app.workflow
async def bad_key(ctx: WorkflowContext) -> None:
    await ctx.step(noop, 1)
    ctx.set_tags(**{"a=b": "v"})
    await ctx.step(noop, 2)


_key_prefix = ["k"]  # the deployed code's tag key names (a rename between deploys changes it)


@app.workflow
async def renamed(ctx: WorkflowContext) -> None:
    ctx.set_tags(**{f"{_key_prefix[0]}{i}": "v" for i in range(10)})
    await ctx.step(noop, 1)
    await ctx.step(noop, 2)


def _tag_events(driver: Driver) -> list[dict[str, str]]:
    return [e.body.tags for e in driver.history if isinstance(e.body, TagsSet)]


@pytest.mark.parametrize("fresh", [False, True])
def test_set_tags_is_recorded_once_and_folds_to_the_live_state(fresh: bool) -> None:
    """``fresh``: every input re-executes the workflow from its decoded state; the re-executed set_tags
    calls record nothing new (only the difference with the recorded tags is)."""
    driver = Driver(app, "tagged", fresh_every_input=fresh, check_fold=True)
    try:
        driver.start("basic")
        assert driver.state is not None and driver.state.tags == {"customer": "c-42", "plan": "basic"}
        driver.complete(0, 2_000, 1)
        driver.complete(1, 3_000, 2)
        assert driver.status == "completed"
        assert driver.state.tags == {"customer": "c-42", "plan": "pro", "stage": "after"}
        first, second = {"customer": "c-42", "plan": "basic"}, {"plan": "pro", "stage": "after"}
        assert _tag_events(driver) == [first, second]
        assert_fold_matches(driver)
    finally:
        driver.close()


def test_too_many_tags_park_the_run_with_the_reason() -> None:
    driver = Driver(app, "too_many", check_fold=True)
    try:
        driver.start()
        assert driver.status == "parked"
        assert driver.state is not None
        assert driver.state.error_type == "workflow_error"
        assert f"at most {MAX_TAGS} tag keys" in driver.state.error_message
        assert driver.state.tags == {}
        assert driver.commands() == []  # the step after the bad call was never scheduled
    finally:
        driver.close()


def test_a_bad_key_parks_the_run_after_what_came_before() -> None:
    driver = Driver(app, "bad_key", check_fold=True)
    try:
        driver.start()
        driver.complete(0, 2_000, 1)
        assert driver.status == "parked"
        assert driver.state is not None and "'a=b' refused" in driver.state.error_message
        assert [c.position for c in driver.commands()] == [0]
    finally:
        driver.close()


@pytest.mark.parametrize(
    ("new", "expect"),
    [
        ({"customer": "c-42"}, ""),
        ({"": "v"}, "refused"),
        ({"k" * 65: "v"}, "refused"),
        ({"a b": "v"}, "refused"),
        ({"k": "v" * 257}, "at most 256"),
        ({"k": "a\x00b"}, "without NUL"),
        ({"k": 3}, "values are strings"),
    ],
)
def test_tag_bounds(new: dict[str, Any], expect: str) -> None:
    error = tags_error({}, new)
    assert (expect in error) if expect else error == ""


def test_setting_an_existing_key_again_does_not_count_twice() -> None:
    current = {f"k{i}": "v" for i in range(MAX_TAGS)}
    assert tags_error(current, {"k0": "new"}) == ""
    assert "at most" in tags_error(current, {"other": "v"})


def _old_state_bytes(record: dict[str, Any], sid: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, wire.registry().by_id[sid], record)
    return b"\x00" + sid.to_bytes(4, "big") + buf.getvalue()


def test_a_state_written_before_run_state_v3_reads_with_no_tags() -> None:
    state = st.RunState("r-1", "wf", st.COMPLETED, b"null", 1_000, 2_000, tags={"customer": "c-42"})
    record = st.state_record(state)
    del record["tags"]
    old = _old_state_bytes(record, 7)
    assert st.decode_state(old).tags == {}
    current = st.encode_state(state)
    assert current[1:5] == (12).to_bytes(4, "big")
    assert st.decode_state(current).tags == {"customer": "c-42"}


def test_an_event_written_with_event_v4_still_decodes() -> None:
    from orchestrator._core.events import Event, RunCompleted, event_record

    record = event_record(Event("e-1", "r-1", "wf", 5, RunCompleted(b"1"), 3))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, wire.registry().by_id[10], record)
    event = decode_event(b"\x00" + (10).to_bytes(4, "big") + buf.getvalue())
    assert event.body == RunCompleted(b"1") and event.seq == 3


def test_keys_renamed_across_deploys_cannot_grow_a_run_past_the_limit() -> None:
    """The limit holds for the run's merged tags, not only for what one instance set: code deployed with
    renamed keys re-executes a run (every input, here) and would add 10 keys to its recorded 10."""
    driver = Driver(app, "renamed", fresh_every_input=True, check_fold=True)
    try:
        driver.start()
        assert driver.state is not None and len(driver.state.tags) == 10
        _key_prefix[0] = "renamed"
        driver.complete(0, 2_000, 1)
        assert driver.status == "parked"
        assert f"at most {MAX_TAGS} tag keys" in driver.state.error_message
        assert len(driver.state.tags) == 10
        assert driver.commands() == [c for c in driver.commands() if c.position == 0]  # step 2 not scheduled
    finally:
        _key_prefix[0] = "k"
        driver.close()
