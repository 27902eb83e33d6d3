"""StepLedger: a command delivered again joins its attempt instead of running the step again."""

from __future__ import annotations

from orchestrator._engine.step_ledger import Claim, StepLedger

A = ("run-1", 2, 1)


def test_first_claim_runs_a_redelivery_joins_and_both_offsets_complete_on_delivery() -> None:
    ledger = StepLedger()
    assert ledger.claim(A, ("t", 0, 5)) is Claim.RUN
    assert ledger.claim(A, ("t", 0, 5)) is Claim.JOINED  # same record, fetched again after a lost partition
    assert ledger.delivered(A) == [("t", 0, 5), ("t", 0, 5)]
    assert ledger.open_count() == 0


def test_a_redelivery_after_the_result_was_delivered_completes_at_once() -> None:
    ledger = StepLedger()
    ledger.claim(A, ("t", 0, 5))
    ledger.delivered(A)
    assert ledger.claim(A, ("t", 0, 5)) is Claim.DONE


def test_other_attempts_of_the_same_step_run() -> None:
    ledger = StepLedger()
    ledger.claim(A, ("t", 0, 5))
    ledger.delivered(A)
    assert ledger.claim(("run-1", 2, 2), ("t", 0, 9)) is Claim.RUN


def test_delivered_attempts_are_remembered_up_to_capacity() -> None:
    ledger = StepLedger(capacity=2)
    for i in range(3):
        ledger.claim(("r", i, 1), ("t", 0, i))
        ledger.delivered(("r", i, 1))
    assert ledger.claim(("r", 0, 1), ("t", 0, 0)) is Claim.RUN  # the oldest was forgotten
    assert ledger.claim(("r", 2, 1), ("t", 0, 2)) is Claim.DONE


def test_a_released_attempt_runs_again_when_its_command_is_re_driven() -> None:
    ledger = StepLedger()
    ledger.claim(A, ("t", 0, 5))
    ledger.claim(A, ("t", 0, 5))
    assert ledger.release(A) == [("t", 0, 5), ("t", 0, 5)]
    assert ledger.claim(A, ("t", 0, 9)) is Claim.RUN
