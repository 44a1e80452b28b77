"""One rule for "does this stage accept work now" (perfcycle.domain.deadlines): work is taken
strictly before the stage's due_at, the same for goals, evaluations, paper forms and appeals."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import StageClosed, accepting_work
from perfcycle.domain.models import Appeal, Participant, RaterAssignment
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.appeal import file_appeal
from perfcycle.domain.stages.evaluation import (
    CSV_COLUMNS,
    import_evaluations_csv,
    submit_evaluation,
)
from perfcycle.domain.stages.target_setting import submit_goals
from tests.support.cycle import (
    full_answers,
    launch,
    play_until_waiting_at,
    prepare_demo_org,
    run_until_wait,
    table_rows,
)

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
JUST_BEFORE = timedelta(seconds=1)


@pytest.fixture
def cycle_id(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    org = prepare_demo_org(db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    monkeypatch.setenv("PERFCYCLE_NOW", T0.isoformat())
    get_settings.cache_clear()
    cid = launch(db_url, "external-service", "2026-Q4")
    assert run_until_wait(db_url, cid).stage == "target_setting"
    yield cid
    get_settings.cache_clear()


def due_of(url: str, cycle_id: int, stage: str) -> datetime:
    with session_scope(url) as s:
        return engine.stage_instances(s, cycle_id)[stage].due_at


def at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setenv("PERFCYCLE_NOW", moment.isoformat())


def refused_at_deadline(
    url: str, monkeypatch: pytest.MonkeyPatch, due: datetime, action: Callable[[Session], object]
) -> StageClosed:
    """At due_at exactly the action is refused and nothing changes; a second before, it works."""
    at(monkeypatch, due)
    before = table_rows(url)
    with pytest.raises(StageClosed) as refused, session_scope(url) as s:
        action(s)
    assert table_rows(url) == before
    at(monkeypatch, due - JUST_BEFORE)
    with session_scope(url) as s:
        action(s)
    return refused.value


def write_paper_forms(path: Path, url: str, assignment_id: int) -> Path:
    with session_scope(url) as s:
        a = s.get_one(RaterAssignment, assignment_id)
        rows = [
            [a.rater_id, a.ratee_id, a.rater_type, item, score, comment]
            for item, (score, comment) in full_answers(s, a).items()
        ]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([CSV_COLUMNS, *rows])
    return path


def test_goals_evaluations_paper_forms_and_appeals_share_one_boundary(
    db_url: str, cycle_id: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with session_scope(db_url) as s:
        employee = s.scalars(
            select(Participant.employee_id)
            .where(Participant.cycle_id == cycle_id)
            .order_by(Participant.employee_id)
        ).first()
    assert employee is not None
    goals_due = due_of(db_url, cycle_id, "target_setting")
    refused = refused_at_deadline(
        db_url,
        monkeypatch,
        goals_due,
        lambda s: submit_goals(s, cycle_id, employee, actor=Actor.person(employee)),
    )
    assert (refused.stage, refused.closed_at) == ("target_setting", goals_due)
    [problem] = refused.problems
    assert (problem.code, dict(problem.values)["stage"]) == ("stage_closed", "target_setting")

    play_until_waiting_at(db_url, cycle_id, "evaluation")
    with session_scope(db_url) as s:
        first, second = s.scalars(
            select(RaterAssignment)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
            .order_by(RaterAssignment.id)
            .limit(2)
        ).all()
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
        answers = full_answers(s, first)
        rater = Actor.person(first.rater_id)
        first_id = first.id
    evaluation_due = due_of(db_url, cycle_id, "evaluation")
    refused_at_deadline(
        db_url,
        monkeypatch,
        evaluation_due,
        lambda s: submit_evaluation(s, first_id, answers, rater, policy),
    )
    # The CLI's paper-form import is held to the same deadline as the portal's form.
    forms = write_paper_forms(tmp_path / "forms.csv", db_url, second.id)
    refused_at_deadline(
        db_url,
        monkeypatch,
        evaluation_due,
        lambda s: import_evaluations_csv(s, cycle_id, forms, policy, Actor.hr()),
    )

    play_until_waiting_at(db_url, cycle_id, "appeal")
    with session_scope(db_url) as s:
        appellant = s.scalars(
            select(Appeal.employee_id)
            .where(Appeal.cycle_id == cycle_id, Appeal.state == "open")
            .order_by(Appeal.employee_id)
        ).first()
    assert appellant is not None
    refused_at_deadline(
        db_url,
        monkeypatch,
        due_of(db_url, cycle_id, "appeal"),
        lambda s: file_appeal(
            s, cycle_id, appellant, reason="misattributed", actor=Actor.person(appellant)
        ),
    )


def test_paper_forms_after_the_deadline_are_refused_and_change_nothing(
    db_url: str, cycle_id: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    play_until_waiting_at(db_url, cycle_id, "evaluation")
    with session_scope(db_url) as s:
        pending = s.scalars(
            select(RaterAssignment.id)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
            .order_by(RaterAssignment.id)
        ).first()
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
    assert pending is not None
    forms = write_paper_forms(tmp_path / "late.csv", db_url, pending)
    at(monkeypatch, due_of(db_url, cycle_id, "evaluation") + timedelta(days=2))
    before = table_rows(db_url)
    with pytest.raises(StageClosed, match="the evaluation stage closed on"), session_scope(
        db_url
    ) as s:
        import_evaluations_csv(s, cycle_id, forms, policy, Actor.hr("hr-clerk"))
    assert table_rows(db_url) == before


def test_a_stage_not_yet_open_takes_no_work(db_url: str, cycle_id: int) -> None:
    with pytest.raises(StageClosed, match="is not open") as refused, session_scope(db_url) as s:
        accepting_work(s, cycle_id, "appeal")
    assert refused.value.closed_at is None
