"""A small policy exercising every scoring rule, and a cycle of four participants with metric
values and ratings to score under it (scoring, results, calibration and personal-goal tests)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.orm import Session

from perfcycle.domain.models import (
    Cycle,
    Department,
    Employee,
    Evaluation,
    MetricValue,
    Participant,
    RaterAssignment,
)


def _text(en: str) -> dict[str, str]:
    return {"zh-CN": f"中文 {en}", "en": en}


ANCHORS = {level: _text(f"level {level}") for level in range(1, 6)}


def policy_dict() -> dict[str, Any]:
    """A small policy exercising every rule; the results and calibration tests use it too."""
    return {
        "id": "test-policy",
        "title": _text("Test policy"),
        "department_types": ["external_service"],
        "grades": [
            {"id": "A", "name": _text("Excellent"), "min": 90, "bonus_factor": 1.2},
            {"id": "B", "name": _text("Good"), "min": 80},
            {"id": "C", "name": _text("Fair"), "min": 60},
            {"id": "D", "name": _text("Unsatisfactory"), "min": 0, "bonus_factor": 0.85},
        ],
        "veto_cap": "C",
        "categories": [
            {"id": "result", "name": _text("Result"), "weight": 50},
            {"id": "process", "name": _text("Process"), "weight": 30},
            {"id": "development", "name": _text("Development"), "weight": 10},
            {"id": "veto", "name": _text("Veto"), "weight": 10},
        ],
        "indicators": [
            {
                "kind": "metric",
                "id": "csat",
                "name": _text("Satisfaction"),
                "category": "result",
                "weight": 60,
                "metric": "satisfaction",
                "rule": {"type": "linear_deduction", "target": 95, "per": 1, "points": 2},
            },
            {
                "kind": "metric",
                "id": "response",
                "name": _text("First response"),
                "category": "result",
                "weight": 40,
                "metric": "first_response_minutes",
                "higher_is_better": False,
                "rule": {"type": "ratio", "target": 30, "cap": 120},
            },
            {
                "kind": "rated",
                "id": "attitude",
                "name": _text("Service attitude"),
                "category": "process",
                "weight": 50,
                "rule": {"type": "bars"},
                "anchors": ANCHORS,
            },
            {
                "kind": "metric",
                "id": "timeliness",
                "name": _text("Complaint timeliness"),
                "category": "process",
                "weight": 50,
                "metric": "timeliness",
                "rule": {"type": "linear_deduction", "target": 100, "per": 5, "points": 1},
            },
            {
                "kind": "rated",
                "id": "growth",
                "name": _text("Growth"),
                "category": "development",
                "weight": 100,
                "rule": {"type": "bars"},
                "anchors": ANCHORS,
                "raters": ["superior", "self"],
            },
            {
                "kind": "veto",
                "id": "incident",
                "name": _text("Major incident"),
                "category": "veto",
                "weight": 100,
                "trigger": {"metric": "major_incidents", "above": 0},
            },
        ],
        "raters": {
            "service_recipient": {"weight": 45, "count": 3},
            "superior": {"weight": 30},
            "peer": {"weight": 15, "count": 2},
            "self": {"weight": 10},
        },
        "sources": [{"kind": "csv", "id": "tickets", "path": "metrics.csv"}],
        "stages": [{"name": "data_collection", "days": 7}, {"name": "evaluation", "days": 14}],
        "calibration": {
            "outlier_z": 2,
            "cross_checks": [
                {
                    "id": "sat_vs_complaints",
                    "if_metric": "satisfaction",
                    "at_least": 95,
                    "and_metric": "complaint_rate",
                    "also_at_least": 5,
                    "message": _text("Very high satisfaction while complaints stay high"),
                }
            ],
        },
        "improvement": {"grades": ["D"]},
    }


NOW = datetime(2026, 12, 20, 9, 0, tzinfo=UTC)
# Participants e1..e4 are rated by r1..r6; x1 is an employee outside the cycle.
PARTICIPANTS = ["e1", "e2", "e3", "e4"]
METRICS: dict[str, dict[str, float]] = {
    "e1": {
        "satisfaction": 90,
        "first_response_minutes": 40,
        "timeliness": 90,
        "major_incidents": 0,
    },
    "e2": {
        "satisfaction": 99,
        "first_response_minutes": 20,
        "timeliness": 100,
        "major_incidents": 2,
    },
    "e3": {"satisfaction": 80, "first_response_minutes": 30},
    # e4: no data at all
    "x1": {"satisfaction": 10},
}


# (rater, ratee, rater type, state, {item: score})
ASSIGNMENTS: list[tuple[str, str, str, str, dict[str, int]]] = [
    ("r1", "e1", "service_recipient", "submitted", {"attitude": 4}),
    ("r2", "e1", "service_recipient", "submitted", {"attitude": 5}),
    ("r3", "e1", "service_recipient", "submitted", {"attitude": 4}),
    ("r4", "e1", "superior", "submitted", {"attitude": 5, "growth": 4}),
    ("r5", "e1", "peer", "pending", {"attitude": 1}),  # a draft: must not count
    ("e1", "e1", "self", "submitted", {"attitude": 5, "growth": 2}),
    ("r6", "e1", "peer", "expired", {"attitude": 1}),
    ("r1", "e2", "service_recipient", "submitted", {"attitude": 3}),
    ("r5", "e2", "peer", "submitted", {"attitude": 2}),
    ("r6", "e2", "peer", "submitted", {"attitude": 5}),
    ("r4", "e2", "superior", "pending", {"attitude": 1, "growth": 1}),
    ("r4", "e3", "superior", "submitted", {"attitude": 2, "growth": 3}),
]


def populate(session: Session) -> Cycle:
    session.add(Department(id="d1", name="Service centre", type="external_service"))
    people = [*PARTICIPANTS, "r1", "r2", "r3", "r4", "r5", "r6", "x1"]
    session.add_all(
        Employee(id=e, name=e.upper(), email=f"{e}@example.com", department_id="d1") for e in people
    )
    cycle = Cycle(
        policy="test-policy",
        policy_digest="0" * 64,
        period="2026-Q4",
        period_start=date(2026, 10, 1),
        period_end=date(2026, 12, 31),
        scope_key="",
        start_date=date(2026, 12, 1),
        created_at=NOW,
    )
    session.add(cycle)
    session.flush()
    session.add_all(
        Participant(cycle_id=cycle.id, employee_id=e, department_id="d1") for e in PARTICIPANTS
    )
    session.add_all(
        MetricValue(
            cycle_id=cycle.id,
            employee_id=e,
            metric=m,
            value=v,
            source="test",
            collected_at=NOW,
        )
        for e, metrics in METRICS.items()
        for m, v in metrics.items()
    )
    for rater, ratee, rater_type, state, items in ASSIGNMENTS:
        assignment = RaterAssignment(
            cycle_id=cycle.id,
            rater_id=rater,
            ratee_id=ratee,
            rater_type=rater_type,
            state=state,
            submitted_at=NOW if state == "submitted" else None,
        )
        session.add(assignment)
        session.flush()
        session.add_all(
            Evaluation(assignment_id=assignment.id, item=item, score=score)
            for item, score in items.items()
        )
    session.flush()
    return cycle
