"""The web UI's pure pieces: filters from a query string, the changelog query's paging, the timeline
layout from a run state, tokens/cookies/CSRF, and the bind rule. No server, no broker."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from orchestrator._core.state import (
    AttemptRecord,
    ChildRecord,
    MarkerRecord,
    Resolution,
    RunState,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    TimerRecord,
    WaitRecord,
)
from orchestrator._engine.queries.model import RunFilter, RunSummary
from orchestrator.ui.auth import Auth, Role, UIConfigError, check_bind
from orchestrator.ui.changelog_runs import decode_cursor, encode_cursor, page_of
from orchestrator.ui.filters import FilterError, parse_duration_ms, parse_filter, parse_tags
from orchestrator.ui.settings import UISettings
from orchestrator.ui.timeline import duration_text, layout

NOW = 1_800_000_000_000


# -- filters ----------------------------------------------------------------------------------------------
def test_filter_fields_map_to_a_run_filter() -> None:
    parsed = parse_filter(
        {
            "workflow": "order",
            "status": "failed",
            "q": "ord-1",
            "tags": "team=pay, region = eu",
            "range": "1h",
            "error_type": "TerminalError",
        },
        NOW,
    )
    assert parsed.filter == RunFilter(
        workflow="order",
        status="failed",
        error_type="TerminalError",
        tags={"team": "pay", "region": "eu"},
        since_ms=NOW - 3_600_000,
        run_id_prefix="ord-1",
    )
    assert "cursor=abc" in parsed.query(cursor="abc") and "workflow=order" in parsed.query()


def test_empty_filter_matches_everything_and_times_without_zone_are_utc() -> None:
    assert parse_filter({}, NOW).filter == RunFilter()
    flt = parse_filter({"since": "2026-11-29T10:00", "until": "2026-11-29T11:00:30+01:00"}, NOW).filter
    assert flt.since_ms == 1_795_946_400_000
    assert flt.until_ms == 1_795_946_400_000 + 30_000


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"range": "an hour"}, "range"),
        ({"since": "yesterday"}, "since"),
        ({"tags": "team"}, "tags"),
        ({"tags": "=x"}, "tags"),
        ({"since": "2026-11-29T10:00", "until": "2026-11-29T09:00"}, "until"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(FilterError, match=f"^{field}:"):
        parse_filter(params, NOW)


def test_durations_and_tags() -> None:
    assert [parse_duration_ms(d) for d in ("90s", "15m", "24h", "7d")] == [
        90_000,
        900_000,
        86_400_000,
        604_800_000,
    ]
    assert parse_tags(" , a=1,b=, ") == {"a": "1", "b": ""}
    assert duration_text(850) == "850ms" and duration_text(2_500) == "2.5s"
    assert duration_text(200_000) == "3m 20s" and duration_text(90_000_000) == "1d 1h"


# -- the changelog query's pages ---------------------------------------------------------------------------
def _runs(n: int) -> list[RunSummary]:
    return [
        RunSummary(
            f"r{i:03d}",
            "order" if i % 2 else "trip",
            "failed" if i % 3 == 0 else "completed",
            1000 + i // 2,
            2000,
        )
        for i in range(n)
    ]


def test_pages_are_newest_first_and_the_cursor_walks_every_run_once() -> None:
    runs = _runs(23)  # pairs share a created_ms: the run id breaks the tie, so none is skipped or repeated
    seen: list[str] = []
    cursor = None
    while True:
        page = page_of(runs, RunFilter(), cursor, 5)
        seen.extend(r.run_id for r in page.runs)
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = [r.run_id for r in sorted(runs, key=lambda r: (r.created_ms, r.run_id), reverse=True)]
    assert seen == expected


def test_pages_filter_before_they_cut() -> None:
    page = page_of(_runs(23), RunFilter(workflow="order", status="failed"), None, 50)
    assert [r.run_id for r in page.runs] == ["r021", "r015", "r009", "r003"]
    assert page.next_cursor is None
    assert page_of(_runs(23), RunFilter(run_id_prefix="r01"), None, 50).runs[0].run_id == "r019"
    assert page_of(_runs(23), RunFilter(tags={"team": "x"}), None, 50).runs == []


def test_cursors_round_trip_and_junk_is_refused() -> None:
    assert decode_cursor(encode_cursor((123, "a/b"))) == (123, "a/b")
    for junk in ("", "!!", "WzEsMl0", encode_cursor((1, "x"))[:-3]):
        with pytest.raises(ValueError, match="cursor"):
            decode_cursor(junk)


# -- the timeline -------------------------------------------------------------------------------------------
def _state(
    steps: list,
    status: RunStatus = RunStatus.COMPLETED,
    updated: int = 10_000,
    resolutions: list[Resolution] | None = None,
) -> RunState:
    return RunState("r", "wf", status, b"1", 0, updated, steps=steps, resolutions=resolutions or [])


def test_a_retried_step_shows_queue_time_each_attempt_and_the_backoff_between() -> None:
    step = StepRecord(
        0,
        "charge",
        "default",
        StepStatus.COMPLETED,
        2,
        b"[]",
        scheduled_ms=100,
        attempts=[AttemptRecord(1, 200, 300, "ConnectionError", "timed out"), AttemptRecord(2, 1300, 1400)],
    )
    row = layout(_state([step]), NOW).rows[0]
    assert [(s.kind, s.start_ms, s.end_ms) for s in row.segments] == [
        ("queued", 100, 200),
        ("failed", 200, 300),
        ("backoff", 300, 1300),
        ("attempt", 1300, 1400),
    ]
    assert "ConnectionError: timed out" in row.segments[1].label
    assert not any(s.open for s in row.segments)


def test_a_live_run_has_open_phases_up_to_now() -> None:
    backoff = StepRecord(
        0,
        "a",
        "q",
        StepStatus.BACKOFF,
        2,
        b"",
        0,
        due_ms=5_000,
        attempts=[AttemptRecord(1, 10, 20, "E", "m")],
    )
    running = StepRecord(1, "b", "q", StepStatus.SCHEDULED, 1, b"", 100, started_ms=400)
    waiting = StepRecord(2, "c", "q", StepStatus.SCHEDULED, 1, b"", 100)
    timer = TimerRecord(3, StepStatus.WAITING, 100, due_ms=50_000)
    wait = WaitRecord(4, StepStatus.WAITING, 100, "approved", "k")
    child = ChildRecord(5, StepStatus.SCHEDULED, 100, "ship", "r/5")
    state = _state([backoff, running, waiting, timer, wait, child], RunStatus.RUNNING, updated=500)
    tl = layout(state, now_ms=20_000)
    last = {r.position: r.segments[-1] for r in tl.rows}
    assert (last[0].kind, last[0].start_ms, last[0].end_ms, last[0].open) == ("backoff", 20, 5_000, True)
    assert [(s.kind, s.start_ms, s.end_ms) for s in tl.rows[1].segments] == [
        ("queued", 100, 400),
        ("running", 400, 20_000),
    ]
    assert (last[2].kind, last[2].end_ms) == ("queued", 20_000)
    assert (last[3].kind, last[3].end_ms) == ("sleep", 50_000)  # a timer is drawn up to its due time
    assert (last[4].kind, last[4].end_ms, last[4].open) == ("wait", 20_000, True)
    assert (last[5].kind, tl.rows[5].child_run_id, last[5].open) == ("child", "r/5", True)
    assert tl.end_ms == 50_000  # the chart reaches the furthest phase


def test_resolved_timers_waits_children_compensations_and_markers() -> None:
    timer = TimerRecord(0, StepStatus.COMPLETED, 100, due_ms=900)
    wait = WaitRecord(1, StepStatus.TIMED_OUT, 1_000, "approved", deadline_ms=0)
    child = ChildRecord(2, StepStatus.COMPLETED, 2_000, "ship", "r/2", ended=AttemptRecord(1, 2_000, 2_500))
    detached = ChildRecord(3, StepStatus.COMPLETED, 2_600, "mail", "m-1", detached=True)
    marker = MarkerRecord(4, 2_700, "v2")
    undo = StepRecord(
        5,
        "unbook",
        "q",
        StepStatus.COMPLETED,
        1,
        b"",
        3_000,
        kind=StepKind.COMPENSATION,
        undoes=0,
        attempts=[AttemptRecord(1, 3_100, 3_200)],
    )
    state = _state(
        [timer, wait, child, detached, marker, undo], resolutions=[Resolution(0, 950), Resolution(1, 1_800)]
    )
    rows = layout(state, NOW).rows
    assert (rows[0].segments[0].kind, rows[0].segments[0].end_ms) == ("sleep", 950)
    assert (rows[1].segments[0].kind, rows[1].segments[0].end_ms) == ("wait", 1_800)
    assert "timed_out" in rows[1].segments[0].label
    assert (rows[2].segments[0].start_ms, rows[2].segments[0].end_ms) == (2_000, 2_500)
    assert rows[3].segments[0].kind == "point" and "detached" in rows[3].segments[0].label
    assert rows[4].segments[0].kind == "point"
    assert (rows[5].kind, rows[5].undoes) == ("compensation", 0)


def test_positions_are_percentages_of_the_run_and_tiny_phases_stay_visible() -> None:
    step = StepRecord(0, "a", "q", StepStatus.COMPLETED, 1, b"", 0, attempts=[AttemptRecord(1, 5_000, 5_001)])
    tl = layout(_state([step], updated=10_000), NOW)
    queued, ran = tl.rows[0].segments
    assert (tl.left(queued), tl.width(queued)) == (0.0, 50.0)
    assert tl.left(ran) == 50.0 and tl.width(ran) == 0.4  # 1 ms of 10 s, drawn at the minimum width
    assert [t.pct for t in tl.ticks()] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert tl.ticks()[-1].label == "+10.0s"


# -- auth ---------------------------------------------------------------------------------------------------
def _auth(token: str | None = "full-secret", read: str | None = "look-secret") -> Auth:
    return Auth(
        UISettings(token=SecretStr(token) if token else None, read_token=SecretStr(read) if read else None)
    )


def test_tokens_grant_their_role_and_nothing_else() -> None:
    auth = _auth()
    assert not auth.open
    assert auth.role_for_header("Bearer full-secret") is Role.ADMIN
    assert auth.role_for_header("bearer look-secret") is Role.READ
    for bad in (None, "", "Bearer", "Bearer wrong", "Basic full-secret", "full-secret", "Bearer full-secre"):
        assert auth.role_for_header(bad) is None


def test_cookies_hold_no_token_and_a_forged_or_stale_one_is_refused() -> None:
    auth = _auth()
    cookie = auth.session_cookie(Role.READ)
    assert "look-secret" not in cookie and "full-secret" not in cookie
    assert auth.role_for_cookie(cookie) is Role.READ
    assert auth.role_for_cookie(auth.session_cookie(Role.ADMIN)) is Role.ADMIN
    assert auth.role_for_cookie("admin." + cookie.split(".")[1]) is None  # a read cookie relabelled
    assert auth.role_for_cookie("admin.00") is None and auth.role_for_cookie("root.x") is None
    assert _auth(token="rotated").role_for_cookie(auth.session_cookie(Role.ADMIN)) is None


def test_csrf_tokens_are_per_role_and_per_server_in_open_mode() -> None:
    auth = _auth()
    assert auth.csrf_ok(Role.ADMIN, auth.csrf_token(Role.ADMIN))
    assert not auth.csrf_ok(Role.ADMIN, auth.csrf_token(Role.READ))
    assert not auth.csrf_ok(Role.ADMIN, None) and not auth.csrf_ok(Role.ADMIN, "")
    one, two = _auth(None, None), _auth(None, None)
    assert one.open and one.csrf_ok(Role.ADMIN, one.csrf_token(Role.ADMIN))
    assert not two.csrf_ok(Role.ADMIN, one.csrf_token(Role.ADMIN))  # another server process: another key


def test_an_open_ui_binds_only_to_localhost() -> None:
    check_bind("127.0.0.1", UISettings())
    with pytest.raises(UIConfigError, match="ORCHESTRATOR_UI__TOKEN"):
        check_bind("0.0.0.0", UISettings())
    check_bind("0.0.0.0", UISettings(read_token=SecretStr("x")))
    check_bind("0.0.0.0", UISettings(token=SecretStr("x")))


def test_tokens_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_UI__TOKEN", "t1")
    monkeypatch.setenv("ORCHESTRATOR_UI__READ_TOKEN", "t2")
    settings = UISettings()
    assert settings.token is not None and settings.token.get_secret_value() == "t1"
    assert settings.read_token is not None and settings.read_token.get_secret_value() == "t2"
    assert "t1" not in repr(settings)


def test_the_changelog_query_scans_once_per_ttl_and_forgets_after_an_action(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator import App
    from orchestrator.ui import changelog_runs

    scans: list[int] = []
    states = {"a": RunState("a", "wf", RunStatus.FAILED, b"", 5, 9, error_type="E", error_message="m")}

    def live_states(app: App, *, on_unreadable: object = None) -> dict[str, RunState]:
        scans.append(1)
        return states

    monkeypatch.setattr(changelog_runs.audit, "live_states", live_states)
    now = [100.0]
    query = changelog_runs.ChangelogRunQuery(App("q"), ttl=1.0, clock=lambda: now[0])
    page = query.list(RunFilter(status="failed"))
    assert [(r.run_id, r.ended_ms, r.error_type, 0 <= r.partition < 4) for r in page.runs] == [
        ("a", 9, "E", True)
    ]
    assert query.count(RunFilter()) == 1 and len(scans) == 1  # a page's list and count: one scan
    now[0] += 1.5
    query.count(RunFilter())
    assert len(scans) == 2
    query.forget()
    query.count(RunFilter())
    assert len(scans) == 3
