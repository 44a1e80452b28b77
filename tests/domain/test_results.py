"""compute_results and results_table on a real database populated by the test."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain import audit
from perfcycle.domain.models import (
    AuditEvent,
    CalibrationChange,
    Cycle,
    MetricValue,
    Result,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.results import compute_results, results_table
from perfcycle.domain.scoring import score_employee
from tests.support.scoring import ASSIGNMENTS, METRICS, PARTICIPANTS, policy_dict, populate


def raw_ratings(ratee: str) -> dict[str, dict[str, list[int]]]:
    """What score_employee expects, built from the fixture data by hand rules (submitted only)."""
    out: dict[str, dict[str, list[int]]] = {}
    for _rater, r_ratee, rater_type, state, items in ASSIGNMENTS:
        if r_ratee != ratee or state != "submitted":
            continue
        for item, score in items.items():
            out.setdefault(item, {}).setdefault(rater_type, []).append(score)
    return out


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(policy_dict())


def stored(session: Session, cycle_id: int) -> dict[str, Result]:
    session.expire_all()
    rows = session.scalars(select(Result).where(Result.cycle_id == cycle_id)).all()
    return {r.employee_id: r for r in rows}


def audit_events(session: Session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all())


def test_stored_results_equal_score_employee(session: Session, policy: Policy) -> None:
    cycle = populate(session)

    written = compute_results(session, cycle, policy)

    assert written == len(PARTICIPANTS)
    rows = stored(session, cycle.id)
    assert sorted(rows) == PARTICIPANTS  # x1 is not a participant
    for employee_id in PARTICIPANTS:
        expected = score_employee(policy, METRICS.get(employee_id, {}), raw_ratings(employee_id))
        row = rows[employee_id]
        # Exact equality: SQL aggregation must give the very floats the pure function gives.
        assert row.total == expected.total
        assert row.indicators == expected.indicators
        assert row.categories == expected.categories
        assert row.computed_grade == row.grade == expected.grade
        assert row.veto_triggered == expected.veto_triggered
        assert row.flags == expected.flags


def test_hand_checked_rows(session: Session, policy: Policy) -> None:
    cycle = populate(session)
    compute_results(session, cycle, policy)
    rows = stored(session, cycle.id)

    # e1: pending and expired peers ignored; attitude sr mean 13/3, superior 5, self 5
    # -> (45*13/3 + 30*5 + 10*5) / 85 * 20
    assert rows["e1"].indicators["attitude"] == pytest.approx((195 + 150 + 50) / 85 * 20)
    assert rows["e1"].indicators["growth"] == pytest.approx(70.0)
    # e2: perfect numbers but two major incidents -> capped at C
    assert rows["e2"].veto_triggered is True
    assert rows["e2"].grade == "C"
    assert "missing:growth" in rows["e2"].flags  # the superior's ratings are still pending
    # e4: nothing at all
    assert rows["e4"].total == 0.0
    assert rows["e4"].grade == "D"
    assert {"missing:result", "missing:process", "missing:development", "missing:veto"} <= set(
        rows["e4"].flags
    )


def test_audit_event_records_count_and_distribution(session: Session, policy: Policy) -> None:
    cycle = populate(session)
    compute_results(session, cycle, policy)
    session.commit()  # audit events join the chain when their transaction commits

    [event] = audit_events(session, "results.computed")
    assert event.actor == "system"
    assert event.subject == f"cycle:{cycle.id}"
    assert event.cycle_id == cycle.id
    grades = [r.grade for r in stored(session, cycle.id).values()]
    assert event.after == {
        "count": 4,
        "grade_distribution": {g: grades.count(g) for g in ["A", "B", "C", "D"]},
    }
    assert audit.verify(session).ok


def test_rerun_changes_nothing(db_url: str, policy: Policy) -> None:
    with session_scope(db_url) as s:
        cycle = populate(s)
        cycle_id = cycle.id
        compute_results(s, cycle, policy)
        before = {e: _snapshot(r) for e, r in stored(s, cycle_id).items()}
        ids = {e: r.id for e, r in stored(s, cycle_id).items()}

    with session_scope(db_url) as s:
        assert compute_results(s, s.get_one(Cycle, cycle_id), policy) == 0

    with session_scope(db_url) as s:
        after = stored(s, cycle_id)
        assert {e: _snapshot(r) for e, r in after.items()} == before
        assert {e: r.id for e, r in after.items()} == ids
        assert s.scalar(select(func.count()).select_from(Result)) == len(PARTICIPANTS)
        assert len(audit_events(s, "results.computed")) == 1


def test_rerun_keeps_a_calibrated_grade_and_follows_new_data(
    session: Session, policy: Policy
) -> None:
    cycle = populate(session)
    compute_results(session, cycle, policy)
    assert stored(session, cycle.id)["e1"].grade == "B"
    # The committee moved e1 from B to A.
    session.execute(
        update(Result)
        .where(Result.cycle_id == cycle.id, Result.employee_id == "e1")
        .values(grade="A")
    )
    # Late data: e1 and e3 both drop.
    for employee_id in ("e1", "e3"):
        session.execute(
            update(MetricValue)
            .where(
                MetricValue.cycle_id == cycle.id,
                MetricValue.employee_id == employee_id,
                MetricValue.metric == "satisfaction",
            )
            .values(value=40)
        )

    assert compute_results(session, cycle, policy) == 2

    rows = stored(session, cycle.id)
    assert rows["e1"].computed_grade == "C"
    assert rows["e1"].grade == "A"  # the committee's decision stands
    assert rows["e3"].computed_grade == rows["e3"].grade == "D"
    session.commit()
    latest = audit_events(session, "results.computed")[-1]
    assert latest.after == {"count": 2, "grade_distribution": {"A": 1, "B": 0, "C": 1, "D": 2}}


def test_bad_metric_fails_the_whole_cycle_and_writes_nothing(
    session: Session, policy: Policy
) -> None:
    cycle = populate(session)
    session.execute(
        update(MetricValue)
        .where(MetricValue.employee_id == "e3", MetricValue.metric == "first_response_minutes")
        .values(value=-3)
    )

    with pytest.raises(InvalidInput) as err:
        compute_results(session, cycle, policy)

    [problem] = err.value.problems
    assert problem.field == "indicators.response"
    assert problem.message.startswith("employee e3: ")
    assert stored(session, cycle.id) == {}
    assert audit_events(session, "results.computed") == []


def test_results_table_shape(session: Session, policy: Policy) -> None:
    cycle = populate(session)
    compute_results(session, cycle, policy)

    table = results_table(session, cycle.id)

    assert [row["employee_id"] for row in table] == PARTICIPANTS
    for row in table:
        assert list(row) == ["employee_id", "indicators", "categories", "total", "grade"]
        assert list(row["indicators"]) == [i.id for i in policy.indicators]
        assert list(row["categories"]) == [c.id for c in policy.categories]
    e1 = score_employee(policy, METRICS["e1"], raw_ratings("e1"))
    assert table[0] == {
        "employee_id": "e1",
        "indicators": e1.indicators,
        "categories": e1.categories,
        "total": e1.total,
        "grade": e1.grade,
    }
    assert table[3]["indicators"]["csat"] is None
    assert json.loads(json.dumps(table)) == table
    assert results_table(session, cycle.id + 1) == []


@pytest.mark.postgres
def test_compute_results_on_postgres(pg_url: str, policy: Policy) -> None:
    with session_scope(pg_url) as s:
        cycle = populate(s)
        cycle_id = cycle.id
        assert compute_results(s, cycle, policy) == len(PARTICIPANTS)
        s.execute(
            update(Result)
            .where(Result.cycle_id == cycle_id, Result.employee_id == "e1")
            .values(grade="A")
        )
        s.execute(update(MetricValue).where(MetricValue.employee_id == "e1").values(value=40))
    with session_scope(pg_url) as s:
        cycle = s.get_one(Cycle, cycle_id)
        assert compute_results(s, cycle, policy) == 1
        assert compute_results(s, cycle, policy) == 0
        rows = stored(s, cycle_id)
        assert rows["e1"].grade == "A"
        assert rows["e1"].computed_grade != "A"
        for employee_id in PARTICIPANTS[1:]:
            expected = score_employee(
                policy, METRICS.get(employee_id, {}), raw_ratings(employee_id)
            )
            assert rows[employee_id].total == expected.total
            assert rows[employee_id].grade == expected.grade


def _snapshot(row: Result) -> dict[str, Any]:
    return {
        c: getattr(row, c)
        for c in (
            "indicators",
            "categories",
            "total",
            "computed_grade",
            "grade",
            "veto_triggered",
            "flags",
        )
    }


def set_satisfaction(session: Session, cycle_id: int, employee_id: str, value: float) -> None:
    session.execute(
        update(MetricValue)
        .where(
            MetricValue.cycle_id == cycle_id,
            MetricValue.employee_id == employee_id,
            MetricValue.metric == "satisfaction",
        )
        .values(value=value)
    )


def test_a_committee_grade_survives_a_recompute_that_happens_to_match_it(
    session: Session, policy: Policy
) -> None:
    cycle = populate(session)
    compute_results(session, cycle, policy)
    assert stored(session, cycle.id)["e1"].grade == "B"
    # The committee moved e1 from B to A, with its reason on record.
    session.add(CalibrationChange(
        cycle_id=cycle.id, attempt=1, employee_id="e1", from_grade="B", to_grade="A",
        reason="led the outage recovery", decided_by="chair", decided_at=clock.now()))
    session.execute(update(Result).where(Result.cycle_id == cycle.id,
                                         Result.employee_id == "e1").values(grade="A"))
    # New data lifts e1's computed grade to the committee's A: the two now agree...
    set_satisfaction(session, cycle.id, "e1", 100)
    compute_results(session, cycle, policy)
    assert (stored(session, cycle.id)["e1"].computed_grade,
            stored(session, cycle.id)["e1"].grade) == ("A", "A")
    # ...and when later data drops, the decision must still stand.
    set_satisfaction(session, cycle.id, "e1", 40)
    compute_results(session, cycle, policy)
    row = stored(session, cycle.id)["e1"]
    assert row.computed_grade != "A"
    assert row.grade == "A"
