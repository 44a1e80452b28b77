"""Scores every participant of a cycle into the `results` table, and reads it back.

Built for 10,000 participants with 6 raters each: ratings are summed in SQL per ratee, item and
rater type, and the rows are written with one bulk upsert (core.db.upsert). Re-running converges:
unchanged rows are not touched, and a grade the calibration committee changed is never overwritten.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, case, exists, func, or_, select
from sqlalchemy.orm import Session

from perfcycle.core.db import upsert
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.calibration_analytics import distribution
from perfcycle.domain.models import (
    Appeal,
    CalibrationChange,
    Cycle,
    Evaluation,
    MetricValue,
    Participant,
    RaterAssignment,
    Result,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.scoring import EmployeeScore, PersonalGoal, score_employee_totals
from perfcycle.domain.stages.target_setting import agreed_targets, personal_goal_items

# The fields compute_results owns; `grade` is decided separately (calibration may own it).
SCORED_FIELDS = ("indicators", "categories", "total", "computed_grade", "veto_triggered", "flags")


def compute_results(session: Session, cycle: Cycle, policy: Policy) -> int:
    """Score every participant and upsert their result; returns how many rows were written.

    A row is written when it is new or any scored field changed, so a re-run over the same data
    writes 0 and records no audit event. Bad data (a non-finite metric, a negative value under a
    ratio rule) raises InvalidInput naming every employee concerned, before anything is written.
    """
    scores = score_participants(session, cycle.id, policy)
    existing = existing_results(session, cycle.id)
    rows = [
        result_row(cycle.id, employee_id, score)
        for employee_id, score in scores.items()
        if changed(existing.get(employee_id), score)
    ]
    upsert_results(session, rows)
    if rows:
        grades = list(session.scalars(select(Result.grade).where(Result.cycle_id == cycle.id)))
        audit.record(
            session,
            actor=audit.SYSTEM,
            action="results.computed",
            subject=f"cycle:{cycle.id}",
            cycle_id=cycle.id,
            after={"count": len(rows), "grade_distribution": distribution(policy, grades)},
        )
    return len(rows)


def results_table(session: Session, cycle_id: int) -> list[dict[str, Any]]:
    """One dict per employee, by employee id: the shape `perfcycle results ID --json` prints."""
    rows = session.execute(
        select(Result.employee_id, Result.indicators, Result.categories, Result.total, Result.grade)
        .where(Result.cycle_id == cycle_id)
        .order_by(Result.employee_id)
    )
    return [
        {
            "employee_id": r.employee_id,
            "indicators": r.indicators,
            "categories": r.categories,
            "total": r.total,
            "grade": r.grade,
        }
        for r in rows
    ]


# ---------------------------------------------------------------- gathering and scoring


def score_participants(session: Session, cycle_id: int, policy: Policy) -> dict[str, EmployeeScore]:
    participants = session.scalars(
        select(Participant.employee_id)
        .where(Participant.cycle_id == cycle_id)
        .order_by(Participant.employee_id)
    ).all()
    metrics = metrics_by_employee(session, cycle_id)
    ratings = rating_totals_by_ratee(session, cycle_id)
    targets = agreed_targets(session, cycle_id)
    personal = personal_goals_by_employee(session, cycle_id)
    scores: dict[str, EmployeeScore] = {}
    problems: list[Problem] = []
    for employee_id in participants:
        try:
            scores[employee_id] = score_employee_totals(
                policy,
                metrics.get(employee_id, {}),
                ratings.get(employee_id, {}),
                targets=targets.get(employee_id, {}),
                personal=personal.get(employee_id, ()),
            )
        except InvalidInput as exc:
            problems.extend(
                Problem(f"employee {employee_id}: {p.message}", p.file, p.line, p.field)
                for p in exc.problems
            )
    if problems:
        raise InvalidInput(problems)
    return scores


def metrics_by_employee(session: Session, cycle_id: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    rows = session.execute(
        select(MetricValue.employee_id, MetricValue.metric, MetricValue.value).where(
            MetricValue.cycle_id == cycle_id
        )
    )
    for employee_id, metric, value in rows:
        out[employee_id][metric] = value
    return out


def personal_goals_by_employee(session: Session, cycle_id: int) -> dict[str, list[PersonalGoal]]:
    """employee -> their agreed personal goals as scoring sees them, in the order written."""
    return {
        employee_id: [PersonalGoal(g.id, g.weight) for g in goals]
        for employee_id, goals in personal_goal_items(session, cycle_id).items()
    }


def rating_totals_by_ratee(
    session: Session, cycle_id: int
) -> dict[str, dict[str, dict[str, tuple[int, int]]]]:
    """ratee -> item -> rater type -> (sum, count) over submitted assignments only."""
    out: dict[str, dict[str, dict[str, tuple[int, int]]]] = defaultdict(lambda: defaultdict(dict))
    ra, ev = RaterAssignment, Evaluation
    rows = session.execute(
        select(ra.ratee_id, ev.item, ra.rater_type, func.sum(ev.score), func.count(ev.score))
        .join(ev, ev.assignment_id == ra.id)
        .where(ra.cycle_id == cycle_id, ra.state == "submitted")
        .group_by(ra.ratee_id, ev.item, ra.rater_type)
    )
    for ratee_id, item, rater_type, total, count in rows:
        out[ratee_id][item][rater_type] = (int(total), int(count))
    return out


# ---------------------------------------------------------------- writing


def existing_results(session: Session, cycle_id: int) -> dict[str, dict[str, Any]]:
    rows = session.execute(
        select(
            Result.employee_id,
            Result.indicators,
            Result.categories,
            Result.total,
            Result.computed_grade,
            Result.grade,
            Result.veto_triggered,
            Result.flags,
        ).where(Result.cycle_id == cycle_id)
    )
    return {r.employee_id: r._asdict() for r in rows}


def result_row(cycle_id: int, employee_id: str, score: EmployeeScore) -> dict[str, Any]:
    return {
        "cycle_id": cycle_id,
        "employee_id": employee_id,
        "indicators": score.indicators,
        "categories": score.categories,
        "total": score.total,
        "computed_grade": score.grade,
        "grade": score.grade,
        "veto_triggered": score.veto_triggered,
        "flags": score.flags,
    }


def changed(old: dict[str, Any] | None, score: EmployeeScore) -> bool:
    if old is None:
        return True
    new = result_row(0, "", score)
    return any(old[f] != new[f] for f in SCORED_FIELDS)


def upsert_results(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert new rows, update existing ones; a grade people decided stays.

    Decided means the committee changed it (a calibration_changes row) or an appeal adjusted it;
    `grade != computed_grade` alone is not enough: once a recomputed grade happens to equal the
    decided one, the next recompute would silently overwrite the committee.

    The grade rule is in the statement itself, so a calibration committed between our read and
    this write is still respected.
    """
    table: Table = Result.__table__  # type: ignore[assignment]
    calibrated = or_(
        table.c.grade != table.c.computed_grade,
        exists().where(
            CalibrationChange.cycle_id == table.c.cycle_id,
            CalibrationChange.employee_id == table.c.employee_id,
        ),
        exists().where(
            Appeal.cycle_id == table.c.cycle_id,
            Appeal.employee_id == table.c.employee_id,
            Appeal.outcome == "adjusted",
        ),
    )
    upsert(
        session,
        table,
        rows,
        key=("cycle_id", "employee_id"),
        update=lambda new: {
            **{f: new[f] for f in SCORED_FIELDS},
            "grade": case((calibrated, table.c.grade), else_=new.computed_grade),
        },
    )
