"""Personal SMART goals and agreed targets in the score. Numbers in comments: the hand computation.

The policy is tests/domain/test_scoring.py's, with personal goals sharing 6% of the total inside the
development category (weight 10) and the `response` indicator's target left open.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput
from perfcycle.domain.models import Cycle, Goal, Result
from perfcycle.domain.policy.checks import check_policy
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.results import compute_results, personal_goals_by_employee
from perfcycle.domain.scoring import PersonalGoal, score_employee
from tests.support.scoring import policy_dict, populate

METRICS = {
    "satisfaction": 90,  # csat 90 (linear deduction from the locked target 95)
    "first_response_minutes": 40,  # response 100*30/40 = 75 (ratio, lower is better)
    "timeliness": 90,  # 98
    "major_incidents": 0,  # 100
}
RATINGS: dict[str, dict[str, list[int]]] = {
    "attitude": {"service_recipient": [4, 4], "superior": [5]},  # 88
    "growth": {"superior": [4], "self": [2]},  # (30*4 + 10*2)/40 = 3.5 -> 70
}
GOALS = [PersonalGoal("personal-1", 4), PersonalGoal("personal-2", 2)]


def personal_policy_dict() -> dict[str, Any]:
    data = policy_dict()
    data["personal_goals"] = {"max": 3, "category": "development", "weight": 6}
    for ind in data["indicators"]:
        if ind["id"] == "response":
            ind["locked"] = False
    return data


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(personal_policy_dict())


def test_the_policy_is_valid(policy: Policy) -> None:
    assert check_policy(policy) == []


# ---------------------------------------------------------------- pure scoring


def test_without_personal_goals_the_score_is_exactly_todays(policy: Policy) -> None:
    plain = Policy.model_validate(policy_dict())
    today = score_employee(plain, METRICS, RATINGS)
    assert score_employee(policy, METRICS, RATINGS) == today
    assert score_employee(policy, METRICS, RATINGS, targets={}, personal=()) == today
    # Ratings under a goal id count for nothing when the employee has no such goal.
    assert score_employee(policy, METRICS, {**RATINGS, "personal-1": {"superior": [1]}}) == today
    assert today.total == pytest.approx(86.9)
    assert "personal-1" not in today.indicators


def test_personal_goals_score_in_their_category_with_their_own_weights(policy: Policy) -> None:
    ratings = {
        **RATINGS,
        "personal-1": {"superior": [5]},  # 100
        "personal-2": {"superior": [3]},  # 60
    }
    score = score_employee(policy, METRICS, ratings, personal=GOALS)
    assert score.indicators == pytest.approx(
        {
            "csat": 90.0,
            "response": 75.0,
            "attitude": 88.0,
            "timeliness": 98.0,
            "growth": 70.0,
            "incident": 100.0,
            "personal-1": 100.0,
            "personal-2": 60.0,
        }
    )
    # development: growth keeps 100% of (10 - 6) = 4, the goals 4 and 2:
    # (4*70 + 4*100 + 2*60) / 10 = 80
    assert score.categories == pytest.approx(
        {"result": 84.0, "process": 93.0, "development": 80.0, "veto": 100.0}
    )
    # (50*84 + 30*93 + 10*80 + 10*100) / 100
    assert score.total == pytest.approx(87.9)
    assert score.grade == "B"
    assert score.flags == []


def test_a_goal_is_the_mean_of_its_superior_ratings_and_nobody_elses(policy: Policy) -> None:
    ratings = {
        **RATINGS,
        "personal-1": {"superior": [4, 3]},  # 3.5 -> 70
        "personal-2": {"superior": [2], "peer": [5, 5], "self": [5]},  # 2 -> 40
    }
    score = score_employee(policy, METRICS, ratings, personal=GOALS)
    assert score.indicators["personal-1"] == pytest.approx(70.0)
    assert score.indicators["personal-2"] == pytest.approx(40.0)
    # (4*70 + 4*70 + 2*40) / 10 = 64
    assert score.categories["development"] == pytest.approx(64.0)


def test_an_unrated_goal_is_missing_and_left_out_of_its_category(policy: Policy) -> None:
    # personal-2 has only a peer's answer: no superior judged it.
    ratings = {**RATINGS, "personal-1": {"superior": [5]}, "personal-2": {"peer": [5]}}
    score = score_employee(policy, METRICS, ratings, personal=GOALS)
    assert score.indicators["personal-2"] is None
    assert score.flags == ["missing:personal-2"]
    # (4*70 + 4*100) / 8 = 85
    assert score.categories["development"] == pytest.approx(85.0)
    # (50*84 + 30*93 + 10*85 + 10*100) / 100
    assert score.total == pytest.approx(88.4)


def test_a_category_of_nothing_but_unrated_goals_scores_zero_and_is_flagged(
    policy: Policy,
) -> None:
    ratings = {"attitude": RATINGS["attitude"]}  # no growth rating, no goal rated
    score = score_employee(policy, METRICS, ratings, personal=GOALS)
    assert score.categories["development"] == 0.0
    assert score.flags == [
        "missing:growth",
        "missing:personal-1",
        "missing:personal-2",
        "missing:development",
    ]


def test_an_agreed_target_changes_an_unlocked_indicators_score(policy: Policy) -> None:
    score = score_employee(policy, METRICS, RATINGS, targets={"response": 36})
    # response: 100*36/40 = 90 instead of 75; result (60*90 + 40*90)/100 = 90
    assert score.indicators["response"] == pytest.approx(90.0)
    assert score.categories["result"] == pytest.approx(90.0)
    # (50*90 + 30*93 + 10*70 + 10*100) / 100
    assert score.total == pytest.approx(89.9)


def test_a_locked_indicator_ignores_any_target(policy: Policy) -> None:
    # csat is locked: a target of 85 would give it 100, the policy's 95 gives 90. Rated and veto
    # indicators have no target to change.
    targets = {"csat": 85.0, "attitude": 1.0, "incident": 5.0}
    assert score_employee(policy, METRICS, RATINGS, targets=targets) == score_employee(
        policy, METRICS, RATINGS
    )
    unlocked_everywhere = Policy.model_validate(policy_dict())  # response locked here
    assert score_employee(
        unlocked_everywhere, METRICS, RATINGS, targets={"response": 36}
    ).indicators["response"] == pytest.approx(75.0)


def test_an_unusable_agreed_target_is_refused_naming_the_indicator(policy: Policy) -> None:
    with pytest.raises(InvalidInput) as err:
        score_employee(policy, METRICS, RATINGS, targets={"response": 0})
    assert [p.field for p in err.value.problems] == ["indicators.response"]
    assert "must be above 0" in err.value.problems[0].message


def test_personal_goals_under_a_policy_without_them_are_refused() -> None:
    plain = Policy.model_validate(policy_dict())
    with pytest.raises(InvalidInput) as err:
        score_employee(plain, METRICS, RATINGS, personal=GOALS)
    assert [p.field for p in err.value.problems] == ["personal"]


def test_a_goal_id_that_clashes_with_an_indicator_is_refused(policy: Policy) -> None:
    with pytest.raises(InvalidInput) as err:
        score_employee(policy, METRICS, RATINGS, personal=[PersonalGoal("growth", 6)])
    assert [p.field for p in err.value.problems] == ["growth"]


# ---------------------------------------------------------------- gathered from the database

NOW = datetime(2026, 12, 20, 9, 0, tzinfo=UTC)


def add_goal(session: Session, cycle: Cycle, employee: str, goal_id: str, **fields: Any) -> None:
    personal = goal_id.startswith("personal-")
    session.add(
        Goal(
            cycle_id=cycle.id,
            employee_id=employee,
            indicator_id=goal_id,
            kind="personal" if personal else "indicator",
            category=fields.pop("category", "development"),
            title=f"goal {goal_id}",
            measure="tickets closed" if personal else None,
            deadline=date(2026, 12, 15) if personal else None,
            weight=fields.pop("weight", 5.0),
            state=fields.pop("state", "agreed"),
            **fields,
        )
    )


def rate_goal(session: Session, cycle: Cycle, ratee: str, item: str, score: int) -> None:
    from perfcycle.domain.models import Evaluation, RaterAssignment

    assignment = session.scalar(
        select(RaterAssignment).where(
            RaterAssignment.cycle_id == cycle.id,
            RaterAssignment.ratee_id == ratee,
            RaterAssignment.rater_type == "superior",
        )
    )
    assert assignment is not None and assignment.state == "submitted"
    session.add(Evaluation(assignment_id=assignment.id, item=item, score=score))


def test_compute_results_uses_agreed_goals_and_targets_only(
    session: Session, policy: Policy
) -> None:
    # tests/domain/test_results.py's cycle: e1 has every metric, its superior r4 submitted.
    cycle = populate(session)
    add_goal(session, cycle, "e1", "personal-1", target=10, weight=4)
    add_goal(session, cycle, "e1", "personal-2", target=3, weight=2)
    add_goal(session, cycle, "e1", "response", category="result", target=36, locked=False)
    add_goal(session, cycle, "e1", "csat", category="result", target=85, locked=True)
    # e3's goal was never agreed: it neither counts nor is asked for.
    add_goal(session, cycle, "e3", "personal-1", target=1, weight=6, state="submitted")
    rate_goal(session, cycle, "e1", "personal-1", 5)
    rate_goal(session, cycle, "e1", "personal-2", 3)
    session.flush()

    assert personal_goals_by_employee(session, cycle.id) == {"e1": GOALS}
    compute_results(session, cycle, policy)
    results = {
        r.employee_id: r for r in session.scalars(select(Result).where(Result.cycle_id == cycle.id))
    }
    e1 = results["e1"]
    # attitude: service recipients 4,5,4 -> 13/3, superior 5, self 5:
    # (45*13/3 + 30*5 + 10*5) / 85 = 395/85; growth (30*4 + 10*2)/40 = 3.5 -> 70
    assert e1.indicators == pytest.approx(
        {
            "csat": 90.0,  # locked: the policy's 95, not the 85 on the sheet
            "response": 90.0,  # unlocked: the agreed 36 -> 100*36/40
            "attitude": 395 / 85 * 20,
            "timeliness": 98.0,
            "growth": 70.0,
            "incident": 100.0,
            "personal-1": 100.0,
            "personal-2": 60.0,
        }
    )
    assert e1.categories["development"] == pytest.approx(80.0)  # (4*70 + 4*100 + 2*60) / 10
    assert e1.flags == []
    assert "personal-1" not in results["e3"].indicators
