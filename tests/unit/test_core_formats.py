"""The frozen identifier formats: pinned, because records on topics and keys in stores already use them."""

from __future__ import annotations

from orchestrator._core import formats as fm
from orchestrator._engine import admission, decider


def test_routing_keys() -> None:
    assert fm.routing_key("approved", "o-1") == "approved\x1fo-1"
    assert fm.admit_routing("checkout", "ann") == "admit\x1fcheckout\x1fann"
    assert fm.admit_routing("step:charge", "") == "admit\x1fstep:charge\x1f"
    assert fm.idempotency_routing("checkout", "cart-9") == "idem\x1fcheckout\x1fcart-9"
    assert fm.schedule_routing("nightly") == "schedule\x1fnightly"
    assert fm.admitted_workflow_key(fm.admit_routing("checkout", "a\x1fb")) == ("checkout", "a\x1fb")


def test_ids() -> None:
    assert fm.idempotency_key("r1", 3, "charge") == "r1/3/charge"
    assert fm.event_id("r1", 7) == "r1/7"
    assert fm.keyed_event_id("r1", 7, "Subscribe") == "r1/k7/Subscribe"
    assert fm.slot_id("r1", 3, 2) == "r1/3/2"
    assert fm.admit_event_id("r1/3/2") == "r1/3/2/admit"
    assert fm.release_event_id("r1/3/2") == "r1/3/2/release"
    assert fm.release_event_id("r1") == "r1/release"
    assert fm.child_start_id("p", 4) == "p/4/start"
    assert fm.child_cancel_id("p", 4) == "p/4/cancel"
    assert fm.child_end_id("c") == "c/end"
    assert fm.attempt_report_id("r1/3/charge", 2, "w-1.5") == "r1/3/charge/2/w-1.5"
    assert fm.attempt_report_id("r1/3/charge", 2, "local") == "r1/3/charge/2/local"
    assert fm.attempt_started_id("r1/3/charge", 2, "w-1.5") == "r1/3/charge/2/started/w-1.5"
    assert fm.schedule_register_id("nightly") == "schedule/nightly"
    assert fm.schedule_start_id("nightly@2026-01-01T00:00") == "schedule/nightly@2026-01-01T00:00"
    assert fm.admitted_start_id("r1") == "admitted/r1"
    assert fm.routed_signal_id("r1", "4", "approvals[0]@9") == "r1/route/4/approvals[0]@9"


def test_timer_tags() -> None:
    assert [fm.retry_tag(2), fm.timer_tag(2), fm.wait_tag(2), fm.timeout_tag(2, 3), fm.RUN_TIMER] == [
        "retry:2",
        "timer:2",
        "wait:2",
        "timeout:2:3",
        "run",
    ]
    assert fm.parse_tag("timeout:2:3") == ("timeout", "2:3")
    assert fm.parse_tag("run") == ("run", "")


def test_old_import_paths_are_the_same_functions() -> None:
    assert decider.routing_key is fm.routing_key
    assert decider.idempotency_key is fm.idempotency_key
    assert admission.admit_routing is fm.admit_routing
    assert admission.idempotency_routing is fm.idempotency_routing
