"""What the calibration committee looks at: the grade distribution, totals far from the mean,
and cross-checks between metrics that should not go together (very high satisfaction while
complaints stay high). Pure functions, plus `anomaly_report` which reads them from the database.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.models import Cycle, MetricValue, Result
from perfcycle.domain.policy.schema import Policy

MIN_FOR_OUTLIERS = 3


def distribution(policy: Policy, grades: Sequence[str]) -> dict[str, int]:
    """Count per grade, every grade of the policy present, highest first."""
    counts = dict.fromkeys(policy.grade_ids(), 0)
    unknown = sorted({g for g in grades if g not in counts})
    if unknown:
        raise InvalidInput(
            [
                Problem(
                    f"grade {g!r} is not one of the policy's grades {list(counts)}", field="grade"
                )
                for g in unknown
            ]
        )
    for g in grades:
        counts[g] += 1
    return counts


def outliers(totals: Mapping[str, float], z: float) -> list[str]:
    """Employees (sorted) whose total is more than z population standard deviations from the mean.

    None with fewer than 3 totals (a "distribution" of two says nothing) or when all are equal.
    """
    if len(totals) < MIN_FOR_OUTLIERS:
        return []
    mean, sd = mean_sd(totals.values())
    if sd == 0:
        return []
    return sorted(e for e, t in totals.items() if abs(t - mean) > z * sd)


def cross_check_flags(
    policy: Policy, metrics_by_employee: Mapping[str, Mapping[str, float]]
) -> dict[str, list[str]]:
    """Employee -> ids of the policy's cross-checks they trip; only employees who trip one."""
    flags: dict[str, list[str]] = {}
    for employee_id in sorted(metrics_by_employee):
        metrics = metrics_by_employee[employee_id]
        tripped = [
            check.id
            for check in policy.calibration.cross_checks
            if check.if_metric in metrics
            and check.and_metric in metrics
            and metrics[check.if_metric] >= check.at_least
            and metrics[check.and_metric] >= check.also_at_least
        ]
        if tripped:
            flags[employee_id] = tripped
    return flags


def anomaly_report(session: Session, cycle: Cycle, policy: Policy) -> dict[str, Any]:
    """Everything the committee and the calibration artifact show, as JSON-ready data.

    Keys: cycle_id, count, distribution {grade: n} (current grades, calibration included), mean
    and sd of the totals (None without results), outlier_z, outliers [{employee_id, total, grade,
    z}], cross_checks {employee_id: [check ids]}, cross_check_messages {check id: {zh-CN, en}}.
    """
    rows = session.execute(
        select(Result.employee_id, Result.total, Result.grade)
        .where(Result.cycle_id == cycle.id)
        .order_by(Result.employee_id)
    ).all()
    totals = {r.employee_id: r.total for r in rows}
    grades = {r.employee_id: r.grade for r in rows}
    mean, sd = mean_sd(totals.values()) if totals else (None, None)
    z = policy.calibration.outlier_z
    flagged = cross_check_flags(policy, metrics_of(session, cycle.id, totals))
    return {
        "cycle_id": cycle.id,
        "count": len(rows),
        "distribution": distribution(policy, list(grades.values())),
        "mean": mean,
        "sd": sd,
        "outlier_z": z,
        "outliers": [
            {
                "employee_id": e,
                "total": totals[e],
                "grade": grades[e],
                # outliers() only names someone when there is a spread, so sd is set and > 0.
                "z": (totals[e] - (mean or 0.0)) / (sd or 1.0),
            }
            for e in outliers(totals, z)
        ],
        "cross_checks": flagged,
        "cross_check_messages": {
            c.id: c.message.model_dump(by_alias=True) for c in policy.calibration.cross_checks
        },
    }


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    data = list(values)
    return statistics.fmean(data), statistics.pstdev(data)


def metrics_of(
    session: Session, cycle_id: int, employees: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """Metric values of the cycle's employees that have a result."""
    out: dict[str, dict[str, float]] = {}
    rows = session.execute(
        select(MetricValue.employee_id, MetricValue.metric, MetricValue.value).where(
            MetricValue.cycle_id == cycle_id
        )
    )
    for employee_id, metric, value in rows:
        if employee_id in employees:
            out.setdefault(employee_id, {})[metric] = value
    return out
