"""Distribution, outliers and cross-checks the calibration committee reviews."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput
from perfcycle.domain.calibration_analytics import (
    anomaly_report,
    cross_check_flags,
    distribution,
    outliers,
)
from perfcycle.domain.models import MetricValue, Result
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.results import compute_results
from tests.support.scoring import policy_dict, populate


@pytest.fixture
def policy() -> Policy:
    return Policy.model_validate(policy_dict())


def two_checks_policy() -> Policy:
    data = policy_dict()
    data["calibration"]["cross_checks"].append(
        {
            "id": "fast_but_reopened",
            "if_metric": "first_contact_resolution",
            "at_least": 90,
            "and_metric": "reopen_rate",
            "also_at_least": 10,
            "message": {"zh-CN": "一次解决率高但重开率高", "en": "High FCR but many reopens"},
        }
    )
    return Policy.model_validate(data)


# ---------------------------------------------------------------- distribution


def test_distribution_lists_every_grade_in_policy_order(policy: Policy) -> None:
    counts = distribution(policy, ["C", "A", "C", "D", "C"])
    assert counts == {"A": 1, "B": 0, "C": 3, "D": 1}
    assert list(counts) == ["A", "B", "C", "D"]
    assert distribution(policy, []) == {"A": 0, "B": 0, "C": 0, "D": 0}


def test_distribution_rejects_a_grade_the_policy_does_not_have(policy: Policy) -> None:
    with pytest.raises(InvalidInput, match="'S' is not one of the policy's grades"):
        distribution(policy, ["A", "S"])


# ---------------------------------------------------------------- outliers


def test_outliers_beyond_z_population_standard_deviations() -> None:
    # mean 46; deviations -36 and nine times +4; variance (1296 + 9*16)/10 = 144 -> sd 12
    totals = {"low": 10.0, **{f"e{i}": 50.0 for i in range(9)}}
    assert outliers(totals, 2.0) == ["low"]  # 36 > 24
    assert outliers(totals, 3.0) == []  # 36 is not more than 36
    assert outliers(totals, 0.3) == sorted(totals)  # 4 > 3.6 too


def test_outliers_on_both_sides_sorted_by_employee() -> None:
    # mean 50, deviations -40, +40 and eight 0: variance 3200/10 = 320 -> sd 17.89
    totals = {"z_high": 90.0, "a_low": 10.0, **{f"m{i}": 50.0 for i in range(8)}}
    assert outliers(totals, 2.0) == ["a_low", "z_high"]  # 40 > 35.78


def test_no_outliers_without_a_spread_or_with_fewer_than_three() -> None:
    assert outliers({"a": 70.0, "b": 70.0, "c": 70.0}, 0.1) == []
    assert outliers({"a": 0.0, "b": 100.0}, 0.1) == []
    assert outliers({}, 2.0) == []


# ---------------------------------------------------------------- cross-checks


def test_cross_check_flags_need_both_conditions_inclusive() -> None:
    policy = two_checks_policy()
    metrics: dict[str, dict[str, float]] = {
        "both_at_threshold": {"satisfaction": 95, "complaint_rate": 5},
        "complaints_fine": {"satisfaction": 99, "complaint_rate": 4.9},
        "satisfaction_low": {"satisfaction": 94.9, "complaint_rate": 20},
        "no_complaint_data": {"satisfaction": 99},
        "trips_both": {
            "satisfaction": 97,
            "complaint_rate": 8,
            "first_contact_resolution": 92,
            "reopen_rate": 12,
        },
        "only_second": {"first_contact_resolution": 90, "reopen_rate": 10},
    }
    assert cross_check_flags(policy, metrics) == {
        "both_at_threshold": ["sat_vs_complaints"],
        "only_second": ["fast_but_reopened"],
        "trips_both": ["sat_vs_complaints", "fast_but_reopened"],
    }


def test_no_cross_checks_in_the_policy_flags_nobody() -> None:
    data = policy_dict()
    data["calibration"] = {}
    policy = Policy.model_validate(data)
    assert cross_check_flags(policy, {"e": {"satisfaction": 100, "complaint_rate": 100}}) == {}


# ---------------------------------------------------------------- the report from the database


def test_anomaly_report_from_the_database(session: Session, policy: Policy) -> None:
    cycle = populate(session)
    # e2 also trips the satisfaction/complaints cross-check; x1 (not a participant) must not.
    session.add_all(
        MetricValue(
            cycle_id=cycle.id,
            employee_id=e,
            metric="complaint_rate",
            value=7,
            source="test",
            collected_at=cycle.created_at,
        )
        for e in ("e2", "x1")
    )
    session.execute(
        update(MetricValue)
        .where(MetricValue.employee_id == "x1", MetricValue.metric == "satisfaction")
        .values(value=99)
    )
    compute_results(session, cycle, policy)
    # The committee raised e4 from D to C: the report shows current grades.
    session.execute(update(Result).where(Result.employee_id == "e4").values(grade="C"))
    session.expire_all()

    report = anomaly_report(session, cycle, policy)

    totals = {r.employee_id: r.total for r in session.query(Result).filter_by(cycle_id=cycle.id)}
    mean = sum(totals.values()) / 4
    sd = (sum((t - mean) ** 2 for t in totals.values()) / 4) ** 0.5
    assert report["cycle_id"] == cycle.id
    assert report["count"] == 4
    assert report["distribution"] == {"A": 0, "B": 1, "C": 2, "D": 1}
    assert report["mean"] == pytest.approx(mean)
    assert report["sd"] == pytest.approx(sd)
    assert report["outlier_z"] == 2.0
    assert report["outliers"] == []  # four totals that spread evenly: nobody beyond 2 sd
    assert report["cross_checks"] == {"e2": ["sat_vs_complaints"]}
    assert report["cross_check_messages"] == {
        "sat_vs_complaints": {
            "zh-CN": "中文 Very high satisfaction while complaints stay high",
            "en": "Very high satisfaction while complaints stay high",
        }
    }
    assert json.loads(json.dumps(report, ensure_ascii=False)) == report


def test_anomaly_report_names_outliers_with_their_totals(session: Session, policy: Policy) -> None:
    cycle = populate(session)
    compute_results(session, cycle, policy)
    # Three more employees sitting on e1's total make e4 (0) stand out at z = 1.5.
    data = policy_dict()
    data["calibration"]["outlier_z"] = 1.5
    strict = Policy.model_validate(data)
    e1_total = next(r.total for r in session.query(Result).filter_by(employee_id="e1"))
    session.execute(
        update(Result).where(Result.employee_id.in_(["e2", "e3"])).values(total=e1_total)
    )
    session.expire_all()

    report = anomaly_report(session, cycle, strict)

    # mean 3t/4, deviations t/4 (x3) and -3t/4: sd = t*sqrt(3)/4, e4's z = -sqrt(3) ~ -1.73
    [outlier] = report["outliers"]
    assert outlier["employee_id"] == "e4"
    assert outlier["total"] == 0.0
    assert outlier["grade"] == "D"
    assert outlier["z"] == pytest.approx(-(3**0.5))


def test_anomaly_report_of_a_cycle_without_results(session: Session, policy: Policy) -> None:
    cycle = populate(session)
    report = anomaly_report(session, cycle, policy)
    assert report["count"] == 0
    assert report["distribution"] == {"A": 0, "B": 0, "C": 0, "D": 0}
    assert report["mean"] is None and report["sd"] is None
    assert report["outliers"] == [] and report["cross_checks"] == {}
