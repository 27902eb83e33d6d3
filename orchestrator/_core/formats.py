"""Every identifier format the engine writes to Kafka or to its stores, in one place.

These strings are frozen: they appear in records already on topics and in stores (event ids that
consumers dedupe on, routing keys the keyed stage partitions by, idempotency keys steps are given, timer
tags in the timer index). Changing one breaks running deployments, so each is built by one function here
and every module imports it from here.
"""

from __future__ import annotations

SEP = "\x1f"
"""Separator inside routing keys: a control character that user keys and names do not contain."""


# -- routing keys of the keyed stage ------------------------------------------------------------------------
def routing_key(event_name: str, key: str) -> str:
    """What the keyed stage partitions waits and domain events by."""
    return f"{event_name}{SEP}{key}"


def admit_routing(workflow: str, key: str) -> str:
    """The admission document of ``workflow`` (or ``step:<name>``) for one admission key."""
    return f"admit{SEP}{workflow}{SEP}{key}"


def idempotency_routing(workflow: str, idempotency_key: str) -> str:
    """Where a start with an idempotency key is checked against its window."""
    return f"idem{SEP}{workflow}{SEP}{idempotency_key}"


def schedule_routing(workflow: str) -> str:
    """A workflow's schedule: its registration, pauses and ticks meet in one keyed partition."""
    return f"schedule{SEP}{workflow}"


def admitted_workflow_key(admission_key: str) -> tuple[str, str]:
    """(workflow, key) of a run's admission routing key (``admit<SEP>workflow<SEP>key``)."""
    _, workflow, key = admission_key.split(SEP, 2)
    return workflow, key


# -- ids ----------------------------------------------------------------------------------------------------
def idempotency_key(run_id: str, position: int, step: str) -> str:
    """Stable across retries and redeliveries of one step of one run."""
    return f"{run_id}/{position}/{step}"


def event_id(run_id: str, seq: int) -> str:
    """A history event's id: its run and its place in the run's history."""
    return f"{run_id}/{seq}"


def keyed_event_id(run_id: str, seq: int, kind: str) -> str:
    """A run's request to the keyed stage (subscribe, unsubscribe), numbered by the run's history."""
    return f"{run_id}/k{seq}/{kind}"


def slot_id(run_id: str, position: int, attempt: int) -> str:
    """The admission slot of one attempt of a step with its own concurrency or rate limit."""
    return f"{run_id}/{position}/{attempt}"


def admit_event_id(slot: str) -> str:
    return f"{slot}/admit"


def release_event_id(slot_or_run_id: str) -> str:
    """Freeing a step attempt's slot (``<slot>/release``) or a run's (``<run_id>/release``)."""
    return f"{slot_or_run_id}/release"


def attempt_report_id(idempotency_key: str, attempt: int, suffix: str) -> str:
    """A step attempt's result (``suffix``: ``local``, or the reporting worker's unique suffix)."""
    return f"{idempotency_key}/{attempt}/{suffix}"


def attempt_started_id(idempotency_key: str, attempt: int, suffix: str) -> str:
    """A worker's report that it started a step attempt."""
    return f"{idempotency_key}/{attempt}/started/{suffix}"


def schedule_register_id(workflow: str) -> str:
    """A processor's registration of ``workflow``'s schedule with the keyed stage."""
    return f"schedule/{workflow}"


def schedule_start_id(run_id: str) -> str:
    """The start of a scheduled run (``<workflow>@<tick ISO time>``) by its schedule's tick."""
    return f"schedule/{run_id}"


def admitted_start_id(run_id: str) -> str:
    """The start the admission stage sends once a waiting run is admitted."""
    return f"admitted/{run_id}"


def routed_signal_id(run_id: str, position: str, source: str) -> str:
    """A domain event delivered by the keyed stage to the wait at ``position`` of a run."""
    return f"{run_id}/route/{position}/{source}"


def child_start_id(parent_run_id: str, position: int) -> str:
    return f"{parent_run_id}/{position}/start"


def child_cancel_id(parent_run_id: str, position: int) -> str:
    return f"{parent_run_id}/{position}/cancel"


def child_end_id(child_run_id: str) -> str:
    """A child's result sent to its parent's inbox."""
    return f"{child_run_id}/end"


# -- timer tags (the timer index: ``t/<due ms BE><run id>\0<tag>``) ------------------------------------------
RUN_TIMER = "run"
"""The run's own deadline."""


def retry_tag(position: int) -> str:
    return f"retry:{position}"


def timer_tag(position: int) -> str:
    return f"timer:{position}"


def wait_tag(position: int) -> str:
    return f"wait:{position}"


def timeout_tag(position: int, attempt: int) -> str:
    return f"timeout:{position}:{attempt}"


def parse_tag(tag: str) -> tuple[str, str]:
    """(kind, argument) of a timer tag: ``("timeout", "3:2")``, ``("run", "")``."""
    kind, _, arg = tag.partition(":")
    return kind, arg
