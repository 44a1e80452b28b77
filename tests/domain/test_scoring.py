"""Scoring rules on hand-computed cases. The numbers in comments are the hand computation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from perfcycle.core.errors import InvalidInput
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.scoring import grade_for, score_employee, score_indicator
from tests.support.scoring import policy_dict


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(policy_dict())


def indicator(policy: Policy, indicator_id: str) -> Any:
    return next(i for i in policy.indicators if i.id == indicator_id)


def metric_score(policy: Policy, indicator_id: str, metrics: dict[str, float]) -> float | None:
    return score_indicator(indicator(policy, indicator_id), metrics, {}, policy)


# ---------------------------------------------------------------- metric rules


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, 90.0),  # gap 5 -> 100 - 2*5/1
        (95, 100.0),  # on target
        (97, 100.0),  # above target: gap -2 clamps to 0, no bonus above 100
        (40, 0.0),  # gap 55 -> 100 - 110 clamps to 0
        (94.5, 99.0),
    ],
)
def test_linear_deduction_higher_is_better(policy: Policy, value: float, expected: float) -> None:
    assert metric_score(policy, "csat", {"satisfaction": value}) == expected


def test_linear_deduction_lower_is_better() -> None:
    data = policy_dict()
    data["indicators"][3]["higher_is_better"] = False
    data["indicators"][3]["rule"] = {
        "type": "linear_deduction",
        "target": 30,
        "per": 5,
        "points": 1,
    }
    lower = Policy.model_validate(data)
    assert metric_score(lower, "timeliness", {"timeliness": 40}) == 98.0  # gap 10 -> 100 - 1*10/5
    assert metric_score(lower, "timeliness", {"timeliness": 20}) == 100.0  # gap -10 clamps to 0
    assert metric_score(lower, "timeliness", {"timeliness": 530}) == 0.0  # 100 - 100 = 0
    assert metric_score(lower, "timeliness", {"timeliness": 1000}) == 0.0  # below 0 clamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (40, 75.0),  # 100 * 30 / 40
        (60, 50.0),
        (30, 100.0),
        (25, 120.0),  # 100 * 30 / 25 = 120, exactly the cap
        (20, 120.0),  # 150 capped at 120
        (0, 120.0),  # nothing to wait for: the cap
    ],
)
def test_ratio_lower_is_better(policy: Policy, value: float, expected: float) -> None:
    assert metric_score(policy, "response", {"first_response_minutes": value}) == expected


def test_ratio_higher_is_better() -> None:
    data = policy_dict()
    data["indicators"][0]["rule"] = {"type": "ratio", "target": 80, "cap": 110}
    higher = Policy.model_validate(data)
    assert metric_score(higher, "csat", {"satisfaction": 60}) == 75.0  # 100 * 60 / 80
    assert metric_score(higher, "csat", {"satisfaction": 88}) == pytest.approx(110.0)
    assert metric_score(higher, "csat", {"satisfaction": 100}) == 110.0  # 125 capped
    assert metric_score(higher, "csat", {"satisfaction": 0}) == 0.0


def test_ratio_rejects_a_negative_value_naming_the_indicator(policy: Policy) -> None:
    with pytest.raises(InvalidInput) as err:
        metric_score(policy, "response", {"first_response_minutes": -5})
    assert err.value.problems[0].field == "indicators.response"
    assert "negative" in str(err.value)


def test_non_finite_metric_is_rejected(policy: Policy) -> None:
    with pytest.raises(InvalidInput, match="satisfaction"):
        metric_score(policy, "csat", {"satisfaction": math.nan})


def test_metric_without_a_value_has_no_score(policy: Policy) -> None:
    assert metric_score(policy, "csat", {"other": 90}) is None


# ---------------------------------------------------------------- BARS


def bars(policy: Policy, item: str, by_type: dict[str, list[int]]) -> float | None:
    return score_indicator(indicator(policy, item), {}, {item: by_type}, policy)


def test_bars_weights_each_rater_types_mean(policy: Policy) -> None:
    score = bars(
        policy,
        "attitude",
        {"service_recipient": [4, 5, 3], "superior": [5], "peer": [3, 4], "self": [5]},
    )
    # means 4, 5, 3.5, 5 -> (45*4 + 30*5 + 15*3.5 + 10*5) / 100 = 4.325 -> * 20
    assert score == pytest.approx(86.5)


def test_bars_renormalises_over_the_rater_types_that_answered(policy: Policy) -> None:
    # No peers and no self: (45*4 + 30*1) / 75 = 2.8 -> 56, not (45*4 + 30*1) / 100 * 20 = 42.
    score = bars(policy, "attitude", {"service_recipient": [4, 4], "superior": [1]})
    assert score == pytest.approx(56.0)
    # An empty list is a type that did not answer.
    assert bars(policy, "attitude", {"service_recipient": [4, 4], "superior": [1], "peer": []}) == (
        score
    )


def test_bars_counts_only_the_rater_types_the_indicator_lists(policy: Policy) -> None:
    ratings = {"service_recipient": [1, 1, 1], "peer": [1], "superior": [4], "self": [2]}
    # growth is rated by superior and self only: (30*4 + 10*2) / 40 = 3.5 -> 70
    assert bars(policy, "growth", ratings) == pytest.approx(70.0)
    assert bars(policy, "growth", {"service_recipient": [5], "peer": [5]}) is None


def test_bars_without_ratings_has_no_score(policy: Policy) -> None:
    assert bars(policy, "attitude", {}) is None
    assert score_indicator(indicator(policy, "attitude"), {}, {}, policy) is None


def test_bars_rejects_scores_outside_one_to_five(policy: Policy) -> None:
    with pytest.raises(InvalidInput) as err:
        bars(policy, "attitude", {"superior": [6], "peer": [0]})
    assert [p.field for p in err.value.problems] == ["attitude.superior", "attitude.peer"]


# ---------------------------------------------------------------- veto


def test_veto_scores_100_unless_triggered(policy: Policy) -> None:
    assert metric_score(policy, "incident", {"major_incidents": 0}) == 100.0
    assert metric_score(policy, "incident", {"major_incidents": 1}) == 0.0
    assert metric_score(policy, "incident", {}) is None


PERFECT_METRICS = {
    "satisfaction": 100.0,
    "first_response_minutes": 30.0,
    "timeliness": 100.0,
    "major_incidents": 0.0,
}
PERFECT_RATINGS = {
    "attitude": {"service_recipient": [5, 5], "superior": [5]},
    "growth": {"superior": [5], "self": [5]},
}


def test_untriggered_veto_leaves_the_grade_alone(policy: Policy) -> None:
    score = score_employee(policy, PERFECT_METRICS, PERFECT_RATINGS)
    assert score.total == 100.0
    assert score.grade == "A"
    assert score.veto_triggered is False


def test_triggered_veto_scores_0_and_caps_the_grade(policy: Policy) -> None:
    score = score_employee(policy, {**PERFECT_METRICS, "major_incidents": 1}, PERFECT_RATINGS)
    assert score.indicators["incident"] == 0.0
    assert score.categories["veto"] == 0.0
    assert score.total == 90.0  # A on the numbers alone
    assert score.grade == "C"
    assert score.veto_triggered is True


def test_veto_cap_never_raises_a_grade(policy: Policy) -> None:
    assert grade_for(policy, 10, veto_triggered=True) == "D"
    assert grade_for(policy, 70, veto_triggered=True) == "C"


# ---------------------------------------------------------------- composition


def test_composition_of_a_full_employee(policy: Policy) -> None:
    metrics = {
        "satisfaction": 90,  # csat 90
        "first_response_minutes": 40,  # response 75
        "timeliness": 90,  # gap 10 -> 100 - 10/5 = 98
        "major_incidents": 0,  # 100
    }
    ratings = {
        "attitude": {"service_recipient": [4, 4], "superior": [5]},  # (45*4+30*5)/75=4.4 -> 88
        "growth": {"superior": [4], "self": [2]},  # 70
    }
    score = score_employee(policy, metrics, ratings)
    assert score.indicators == pytest.approx(
        {
            "csat": 90.0,
            "response": 75.0,
            "attitude": 88.0,
            "timeliness": 98.0,
            "growth": 70.0,
            "incident": 100.0,
        }
    )
    # result (60*90 + 40*75)/100 = 84; process (88 + 98)/2 = 93
    assert score.categories == pytest.approx(
        {"result": 84.0, "process": 93.0, "development": 70.0, "veto": 100.0}
    )
    # (50*84 + 30*93 + 10*70 + 10*100) / 100
    assert score.total == pytest.approx(86.9)
    assert score.grade == "B"
    assert score.flags == []


def test_total_exactly_at_a_band_minimum_earns_that_band(policy: Policy) -> None:
    metrics = {
        "satisfaction": 85,  # 80
        "first_response_minutes": 37.5,  # 80
        "timeliness": 0,  # 100 - 100/5 = 80
        "major_incidents": 0,
    }
    ratings = {
        "attitude": {"service_recipient": [3, 3, 3], "superior": [3]},  # 60
        "growth": {"superior": [5, 4], "self": [4, 5]},  # 4.5 -> 90
    }
    score = score_employee(policy, metrics, ratings)
    # result 80, process (60+80)/2 = 70, development 90, veto 100
    # (50*80 + 30*70 + 10*90 + 10*100)/100 = 80
    assert score.total == pytest.approx(80.0)
    assert score.grade == "B"


@pytest.mark.parametrize(
    ("total", "grade"),
    [(100, "A"), (90, "A"), (89.999, "B"), (80, "B"), (79.99, "C"), (60, "C"), (0, "D")],
)
def test_grade_bands(policy: Policy, total: float, grade: str) -> None:
    assert grade_for(policy, total, veto_triggered=False) == grade


def test_an_ulp_below_a_band_minimum_still_reaches_it(policy: Policy) -> None:
    assert grade_for(policy, math.nextafter(80.0, 0), veto_triggered=False) == "B"


# ---------------------------------------------------------------- missing data


def test_missing_data_is_left_out_and_flagged(policy: Policy) -> None:
    ratings = {"attitude": {"superior": [4]}}  # 80; nothing else has data
    score = score_employee(policy, {}, ratings)
    assert score.indicators == {
        "csat": None,
        "response": None,
        "attitude": 80.0,
        "timeliness": None,
        "growth": None,
        "incident": None,
    }
    # process renormalised over attitude alone; the empty categories score 0
    assert score.categories == {"result": 0.0, "process": 80.0, "development": 0.0, "veto": 0.0}
    assert score.total == pytest.approx(24.0)  # 30 * 80 / 100
    assert score.grade == "D"
    assert score.veto_triggered is False
    assert score.flags == [
        "missing:csat",
        "missing:response",
        "missing:timeliness",
        "missing:growth",
        "missing:incident",
        "missing:result",
        "missing:development",
        "missing:veto",
    ]


def test_one_missing_indicator_renormalises_its_category(policy: Policy) -> None:
    metrics = {**PERFECT_METRICS, "satisfaction": 90}
    del metrics["first_response_minutes"]
    score = score_employee(policy, metrics, PERFECT_RATINGS)
    assert score.indicators["response"] is None
    assert score.categories["result"] == 90.0  # csat alone, not 60*90/100 = 54
    assert score.flags == ["missing:response"]


def test_score_employee_reports_every_bad_value_at_once(policy: Policy) -> None:
    metrics = {**PERFECT_METRICS, "first_response_minutes": -1, "satisfaction": math.inf}
    with pytest.raises(InvalidInput) as err:
        score_employee(policy, metrics, PERFECT_RATINGS)
    assert {p.field for p in err.value.problems} == {"indicators.csat", "indicators.response"}
