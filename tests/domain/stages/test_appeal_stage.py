"""Appeal stage: the window, accepting, filing, the supervision committee's decision, close."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain.access import SUPERVISION, Actor
from perfcycle.domain.models import Appeal, Result, StageInstance
from perfcycle.domain.stages import appeal
from perfcycle.domain.stages.base import Progress
from perfcycle.notifications.render import format_day, render
from tests.support.factories import (
    NOW,
    OPENED,
    STAGE_DAYS,
    add_results,
    assert_rejected,
    audit_events,
    build_cycle,
    make_policy,
    outbox,
    run_handler,
    table_rows,
)

pytestmark = pytest.mark.usefixtures("frozen_clock")

DUE = OPENED + timedelta(days=STAGE_DAYS)
RESULTS = {
    "boss": ("A", {"csat": 99.0}),
    "m1": ("B", {"csat": 85.0}),
    "e1": ("C", {"csat": 65.0}),
    "e2": ("D", {"csat": 40.0}),
    "e3": ("B", {"csat": 80.0}),
}


@pytest.fixture
def cycle_id(db_url: str) -> int:
    cid = build_cycle(db_url, "appeal")
    add_results(db_url, cid, RESULTS)
    run_handler(db_url, appeal.Handler(), "enter", cid, make_policy())
    return cid


def appeal_of(db_url: str, employee_id: str) -> Appeal:
    with session_scope(db_url) as s:
        return s.scalars(select(Appeal).where(Appeal.employee_id == employee_id)).one()


def grade_of(db_url: str, employee_id: str) -> str:
    with session_scope(db_url) as s:
        return s.scalars(select(Result.grade).where(Result.employee_id == employee_id)).one()


def file(db_url: str, cycle_id: int, employee_id: str, reason: str = "csat data wrong") -> int:
    with session_scope(db_url) as s:
        filed = appeal.file_appeal(
            s, cycle_id, employee_id, reason=reason, actor=Actor.person(employee_id)
        )
        return filed.id


def filing(cycle_id: int, employee_id: str, actor: str = "", reason: str = "unfair") -> Any:
    return lambda s: appeal.file_appeal(
        s, cycle_id, employee_id, reason=reason, actor=Actor.person(actor or employee_id)
    )


def decide(appeal_id: int, **kwargs: Any) -> Any:
    """The supervision committee's member `actor` (sv1 unless said) decides; an Actor as is."""
    args = {"outcome": "upheld", "note": "checked the tickets", "actor": "sv1", **kwargs}
    if isinstance(args["actor"], str):
        args["actor"] = Actor.person(args["actor"], [SUPERVISION])
    return lambda s: appeal.decide_appeal(s, appeal_id, policy=make_policy(), **args)


def test_enter_opens_the_window_for_every_participant(db_url: str) -> None:
    cid = build_cycle(db_url, "appeal")
    add_results(db_url, cid, RESULTS)

    summary = run_handler(db_url, appeal.Handler(), "enter", cid, make_policy())

    assert summary == {"appeals_created": 5, "mails_enqueued": 5}
    with session_scope(db_url) as s:
        states = dict(s.execute(select(Appeal.employee_id, Appeal.state)).tuples().all())
    assert states == dict.fromkeys(RESULTS, "open")
    mails = outbox(db_url, "appeal_window_open")
    assert {m.recipient_id: m.context["grade"] for m in mails} == {
        e: grade for e, (grade, _) in RESULTS.items()
    }
    assert {m.context["deadline"] for m in mails} == {DUE.isoformat()}
    [event] = audit_events(db_url, "appeal.window_opened")
    assert event.after is not None and event.after["window_closes"] == DUE.isoformat()


def test_enter_again_creates_nothing(db_url: str, cycle_id: int) -> None:
    before = table_rows(db_url)

    summary = run_handler(db_url, appeal.Handler(), "enter", cycle_id, make_policy())

    assert summary == {"appeals_created": 0, "mails_enqueued": 0}
    assert table_rows(db_url) == before


def accept_as(cycle_id: int, employee_id: str, actor: str) -> Any:
    return lambda s: appeal.accept_results(s, cycle_id, employee_id, actor=Actor.person(actor))


def test_employee_accepts_the_results(db_url: str, cycle_id: int) -> None:
    def accept(actor: str) -> Any:
        return accept_as(cycle_id, "e3", actor)

    assert_rejected(db_url, accept("boss"), "actor")
    with session_scope(db_url) as s:
        accept("e3")(s)

    assert appeal_of(db_url, "e3").state == "accepted"
    [event] = audit_events(db_url, "appeal.results_accepted")
    assert event.actor == "e3"
    assert event.before is not None and event.before["state"] == "open"
    assert event.after is not None and event.after["state"] == "accepted"
    assert "already answered (accepted)" in assert_rejected(db_url, accept("e3"), "state")
    assert_rejected(db_url, filing(cycle_id, "e3"), "state")
    assert_rejected(db_url, accept_as(cycle_id, "nobody", "nobody"), "employee_id")


def test_employee_files_an_appeal_within_the_window(db_url: str, cycle_id: int) -> None:
    appeal_id = file(db_url, cycle_id, "e2", reason=" my complaints were misattributed ")

    filed = appeal_of(db_url, "e2")
    assert (filed.id, filed.state, filed.reason, filed.filed_at) == (
        appeal_id,
        "filed",
        "my complaints were misattributed",
        NOW,
    )
    [event] = audit_events(db_url, "appeal.filed")
    assert event.actor == "e2" and event.subject == f"appeal:{appeal_id}"
    mails = outbox(db_url, "appeal_received")
    assert sorted((m.recipient_email, m.context["role"]) for m in mails) == [
        ("e2@example.com", "employee"),
        (get_settings().supervision_email, "supervision"),
    ]
    # The committee's mail says by when to decide: the appeal stage's deadline.
    committee = next(m for m in mails if m.context["role"] == "supervision")
    assert committee.context["due_at"] == DUE.isoformat()
    for locale in ("en", "zh-CN"):
        subject = render("appeal_received", locale, committee.context).subject
        assert format_day(DUE.isoformat(), locale) in subject, subject


def test_file_appeal_rejects_wrong_actor_and_missing_reason(db_url: str, cycle_id: int) -> None:
    assert_rejected(db_url, filing(cycle_id, "e1", actor="m1"), "actor")
    assert_rejected(db_url, filing(cycle_id, "e1", reason="  "), "reason")
    assert_rejected(db_url, filing(cycle_id, "e1", actor="e2", reason=""), "actor", "reason")


def test_the_window_closes_at_the_stage_deadline(
    db_url: str, cycle_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFCYCLE_NOW", (DUE - timedelta(seconds=1)).isoformat())
    file(db_url, cycle_id, "e1")

    # The one boundary (perfcycle.domain.deadlines): at due_at exactly the window is closed.
    monkeypatch.setenv("PERFCYCLE_NOW", DUE.isoformat())
    message = assert_rejected(db_url, filing(cycle_id, "e2"), "stage")
    assert "the appeal stage closed on 2026-12-15 09:00 UTC" in message


def test_no_appeal_once_the_stage_is_closed(db_url: str, cycle_id: int) -> None:
    with session_scope(db_url) as s:
        s.execute(
            update(StageInstance)
            .where(StageInstance.cycle_id == cycle_id)
            .values(state="completed", closed_at=NOW - timedelta(days=1))
        )
    message = assert_rejected(db_url, filing(cycle_id, "e2"), "stage")
    assert "closed on 2026-12-09 09:00 UTC" in message


def test_committee_upholds_the_grade(db_url: str, cycle_id: int) -> None:
    appeal_id = file(db_url, cycle_id, "e1")
    with session_scope(db_url) as s:
        decide(appeal_id, note=" tickets confirm the score ")(s)

    decided = appeal_of(db_url, "e1")
    assert (decided.state, decided.outcome, decided.decision_note) == (
        "decided",
        "upheld",
        "tickets confirm the score",
    )
    assert (decided.decided_by, decided.decided_at) == ("sv1", NOW)
    assert grade_of(db_url, "e1") == "C"
    assert audit_events(db_url, "result.grade_adjusted") == []
    [mail] = outbox(db_url, "appeal_decided")
    assert (mail.recipient_id, mail.context["outcome"], mail.context["grade"]) == (
        "e1",
        "upheld",
        "C",
    )


def test_committee_adjusts_the_grade_with_an_audited_before_and_after(
    db_url: str, cycle_id: int
) -> None:
    appeal_id = file(db_url, cycle_id, "e2")
    with session_scope(db_url) as s:
        decide(appeal_id, outcome="adjusted", new_grade="C", note="3 complaints misattributed")(s)

    assert grade_of(db_url, "e2") == "C"
    [change] = audit_events(db_url, "result.grade_adjusted")
    assert (change.actor, change.before, change.after) == (
        "sv1",
        {"grade": "D"},
        {"grade": "C", "appeal_id": appeal_id},
    )
    [decision] = audit_events(db_url, "appeal.decided")
    assert decision.after is not None and decision.after["new_grade"] == "C"
    mails = outbox(db_url, "appeal_decided")
    assert sorted((m.recipient_id, m.context["grade"]) for m in mails) == [("e2", "C"), ("m1", "C")]


def test_committee_may_order_a_re_evaluation(db_url: str, cycle_id: int) -> None:
    appeal_id = file(db_url, cycle_id, "e3")
    with session_scope(db_url) as s:
        decide(appeal_id, outcome="re_evaluated", note="peer ratings to be redone")(s)

    assert (appeal_of(db_url, "e3").outcome, grade_of(db_url, "e3")) == ("re_evaluated", "B")


def test_decide_rejections_name_the_field(db_url: str, cycle_id: int) -> None:
    open_id = appeal_of(db_url, "e3").id
    assert "only a filed appeal" in assert_rejected(db_url, decide(open_id), "state")
    appeal_id = file(db_url, cycle_id, "e2")

    assert "own appeal" in assert_rejected(db_url, decide(appeal_id, actor="e2"), "actor")
    assert "manager" in assert_rejected(db_url, decide(appeal_id, actor="m1"), "actor")
    outsider = Actor.person("e3", ["committee"])
    assert "supervision committee" in assert_rejected(
        db_url, decide(appeal_id, actor=outsider), "actor"
    )
    assert_rejected(db_url, decide(appeal_id, note=""), "note")
    assert_rejected(db_url, decide(appeal_id, outcome="overturned"), "outcome")
    assert_rejected(db_url, decide(appeal_id, outcome="adjusted"), "new_grade")
    assert_rejected(db_url, decide(appeal_id, outcome="upheld", new_grade="C"), "new_grade")
    message = assert_rejected(
        db_url, decide(appeal_id, outcome="adjusted", new_grade="Z"), "new_grade"
    )
    assert "not a grade of policy test-policy (A, B, C, D)" in message
    assert_rejected(db_url, decide(appeal_id, outcome="adjusted", new_grade="D"), "new_grade")
    assert_rejected(db_url, decide(appeal_id, note="", outcome="x"), "note", "outcome")
    assert_rejected(db_url, decide(9999), "appeal_id")


def test_progress_and_close_lapse_the_silent_and_keep_filed_appeals(
    db_url: str, cycle_id: int
) -> None:
    handler, policy = appeal.Handler(), make_policy()
    with session_scope(db_url) as s:
        appeal.accept_results(s, cycle_id, "e3", actor=Actor.person("e3"))
    decided = file(db_url, cycle_id, "e1")
    file(db_url, cycle_id, "e2")
    with session_scope(db_url) as s:
        decide(decided)(s)
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(2, 5)

    summary = run_handler(db_url, handler, "close", cycle_id, policy)

    assert summary == {
        "open": 0,
        "accepted": 1,
        "filed": 1,
        "decided": 1,
        "lapsed": 2,
        "marked_lapsed": 2,
    }
    [event] = audit_events(db_url, "appeal.lapsed")
    assert event.after == {"state": "lapsed", "employees": ["boss", "m1"]}
    before = table_rows(db_url)
    assert run_handler(db_url, handler, "close", cycle_id, policy)["marked_lapsed"] == 0
    assert table_rows(db_url) == before
    # The committee still decides an appeal filed in time after the window closed.
    with session_scope(db_url) as s:
        decide(appeal_of(db_url, "e2").id)(s)
    assert run_handler(db_url, handler, "progress", cycle_id, policy) == Progress(3, 5)
