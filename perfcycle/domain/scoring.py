"""Scores, category scores, totals and grades from metric values and ratings. Pure: no database.

Every number is kept as a full float; rounding is for display only. An indicator without data
scores None and drops out of its category's weighted mean, which is renormalised over the rest.

Two things agreed at target setting enter per employee: the target of an unlocked metric
indicator, and personal SMART goals, which the superior rates 1-5 and which share
`policy.personal_goals.weight` percent of the total inside their category.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.models import RaterType
from perfcycle.domain.policy.schema import (
    Indicator,
    LinearDeduction,
    MetricIndicator,
    Policy,
    RatedIndicator,
    Ratio,
    VetoIndicator,
)

# item id -> rater type -> (sum of the raters' scores, number of raters). Sums and counts of
# integers are exact on every backend, so SUM/COUNT from SQL gives the very floats that a Python
# mean over the raw scores gives.
RatingTotals = Mapping[str, Mapping[str, tuple[int, int]]]

# Float composition of hand-exact inputs can land an ulp below a band minimum (79.99999999999999
# for 80); a total that close to the minimum has reached it.
BAND_TOLERANCE = 1e-9

MIN_RATING, MAX_RATING = 1, 5


@dataclass(frozen=True)
class EmployeeScore:
    indicators: dict[str, float | None]
    categories: dict[str, float]
    total: float
    grade: str
    veto_triggered: bool
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PersonalGoal:
    """An agreed personal goal as scoring sees it: its item id and its percent of the total."""

    id: str
    weight: float


def score_indicator(
    indicator: Indicator,
    metrics: Mapping[str, float],
    ratings: Mapping[str, Mapping[str, Sequence[int]]],
    policy: Policy,
) -> float | None:
    """One indicator's 0..cap score, or None when it has no data."""
    return score_indicator_totals(indicator, metrics, totals_of(ratings), policy)


def score_indicator_totals(
    indicator: Indicator, metrics: Mapping[str, float], ratings: RatingTotals, policy: Policy
) -> float | None:
    """`score_indicator` for ratings already summed per item and rater type (e.g. by SQL)."""
    if isinstance(indicator, MetricIndicator):
        value = metric_value(indicator.id, indicator.metric, metrics)
        if value is None:
            return None
        return score_metric(indicator, value)
    if isinstance(indicator, VetoIndicator):
        value = metric_value(indicator.id, indicator.trigger.metric, metrics)
        if value is None:
            return None
        return 0.0 if veto_triggered(indicator, value) else 100.0
    return score_bars(indicator, ratings.get(indicator.id, {}), policy)


def score_employee(
    policy: Policy,
    metrics: Mapping[str, float],
    ratings: Mapping[str, Mapping[str, Sequence[int]]],
    *,
    targets: Mapping[str, float] | None = None,
    personal: Sequence[PersonalGoal] = (),
) -> EmployeeScore:
    """Every indicator, category, the total and the grade of one employee.

    `ratings` is {item_id: {rater_type: [scores 1-5]}}; `targets` the employee's agreed targets
    by indicator id (only unlocked metric indicators use them); `personal` their agreed personal
    goals, rated under their own ids.
    """
    return score_employee_totals(
        policy, metrics, totals_of(ratings), targets=targets, personal=personal
    )


def score_employee_totals(
    policy: Policy,
    metrics: Mapping[str, float],
    ratings: RatingTotals,
    *,
    targets: Mapping[str, float] | None = None,
    personal: Sequence[PersonalGoal] = (),
) -> EmployeeScore:
    """`score_employee` for ratings already summed per item and rater type (e.g. by SQL)."""
    indicators: dict[str, float | None] = {}
    vetoed = False
    problems = personal_goal_problems(policy, personal)
    for ind in policy.indicators:
        try:
            scored = with_agreed_target(ind, targets or {})
            indicators[ind.id] = score_indicator_totals(scored, metrics, ratings, policy)
        except InvalidInput as exc:
            problems.extend(exc.problems)
            continue
        if isinstance(ind, VetoIndicator) and indicators[ind.id] == 0.0:
            vetoed = True
    if problems:
        raise InvalidInput(problems)
    for goal in personal:
        indicators[goal.id] = score_personal_goal(ratings.get(goal.id, {}))

    categories, flags = score_categories(policy, indicators, personal)
    total = math.fsum(c.weight * categories[c.id] for c in policy.categories) / 100
    return EmployeeScore(
        indicators=indicators,
        categories=categories,
        total=total,
        grade=grade_for(policy, total, vetoed),
        veto_triggered=vetoed,
        flags=flags,
    )


def score_categories(
    policy: Policy,
    indicators: Mapping[str, float | None],
    personal: Sequence[PersonalGoal] = (),
) -> tuple[dict[str, float], list[str]]:
    """Weighted mean per category over the indicators with data, and the `missing:` flags."""
    flags = [f"missing:{ind.id}" for ind in policy.indicators if indicators.get(ind.id) is None]
    flags += [f"missing:{g.id}" for g in personal if indicators.get(g.id) is None]
    shared = policy.personal_goals.category if personal else None
    categories: dict[str, float] = {}
    for cat in policy.categories:
        if cat.id == shared:
            scored = shared_category_pairs(policy, cat.weight, indicators, personal)
        else:
            scored = [
                (ind.weight, score)
                for ind in policy.indicators
                if ind.category == cat.id and (score := indicators.get(ind.id)) is not None
            ]
        if not scored:
            # A category with nothing to stand on earns nothing, and the committee must see why.
            categories[cat.id] = 0.0
            flags.append(f"missing:{cat.id}")
            continue
        categories[cat.id] = weighted_mean(scored)
    return categories, flags


def shared_category_pairs(
    policy: Policy,
    category_weight: float,
    indicators: Mapping[str, float | None],
    personal: Sequence[PersonalGoal],
) -> list[tuple[float, float]]:
    """(weight, score) pairs of the category the personal goals score in, with data.

    Weights are in percent of the total: the category's indicators share what the personal
    goals leave of the category weight, each goal carries its own weight.
    """
    kept = category_weight - policy.personal_goals.weight
    category = policy.personal_goals.category
    pairs = [
        (ind.weight / 100 * kept, score)
        for ind in policy.indicators
        if ind.category == category and (score := indicators.get(ind.id)) is not None
    ]
    pairs += [(g.weight, score) for g in personal if (score := indicators.get(g.id)) is not None]
    return pairs


def grade_for(policy: Policy, total: float, veto_triggered: bool) -> str:
    """The highest band whose minimum the total reaches, no better than veto_cap if vetoed."""
    order = policy.grade_ids()
    reached = next(
        (g.id for g in policy.grades if total >= g.min - BAND_TOLERANCE),
        # Below every band (a policy whose lowest minimum is above 0): the lowest band.
        order[-1],
    )
    if not veto_triggered:
        return reached
    if policy.veto_cap not in order:
        raise InvalidInput(
            [Problem(f"{policy.veto_cap!r} is not one of the grades {order}", field="veto_cap")]
        )
    return order[max(order.index(reached), order.index(policy.veto_cap))]


# ---------------------------------------------------------------- one rule each


def with_agreed_target(indicator: Indicator, targets: Mapping[str, float]) -> Indicator:
    """The indicator with the employee's agreed target, if the policy leaves its target open.

    A locked indicator keeps the policy's target whatever `targets` holds: the policy decides
    which targets are negotiable, not the data handed in.
    """
    if not isinstance(indicator, MetricIndicator) or indicator.locked:
        return indicator
    target = targets.get(indicator.id)
    if target is None:
        return indicator
    at = f"indicators.{indicator.id}"
    if not math.isfinite(target):
        raise InvalidInput([Problem(f"agreed target {target} is not a finite number", field=at)])
    if isinstance(indicator.rule, Ratio) and target <= 0:
        raise InvalidInput(
            [Problem(f"agreed target {target} must be above 0 under a ratio rule", field=at)]
        )
    rule = indicator.rule.model_copy(update={"target": float(target)})
    return indicator.model_copy(update={"rule": rule})


def score_personal_goal(by_type: Mapping[str, tuple[int, int]]) -> float | None:
    """The superior's mean attainment rating times 20; None until a superior rated it.

    Only the superior judges whether a goal agreed with them was met, so other rater types'
    answers under the goal's id (there should be none) count for nothing.
    """
    total, count = by_type.get(RaterType.superior.value, (0, 0))
    if count == 0:
        return None
    return total / count * 20


def personal_goal_problems(policy: Policy, personal: Sequence[PersonalGoal]) -> list[Problem]:
    """Personal goals the policy cannot score: none allowed, a clashing id, a bad weight."""
    if not personal:
        return []
    if policy.personal_goals.category is None:
        return [Problem("the policy has no personal goals, yet some were given", field="personal")]
    taken = {ind.id for ind in policy.indicators}
    problems: list[Problem] = []
    for goal in personal:
        if goal.id in taken:
            problems.append(
                Problem(f"{goal.id} is already an indicator's or a goal's id", field=goal.id)
            )
        taken.add(goal.id)
        if not (math.isfinite(goal.weight) and goal.weight > 0):
            problems.append(
                Problem(f"personal goal weight {goal.weight} must be above 0", field=goal.id)
            )
    return problems


def score_metric(indicator: MetricIndicator, value: float) -> float:
    rule = indicator.rule
    if isinstance(rule, LinearDeduction):
        return linear_deduction(rule, value, indicator.higher_is_better)
    return ratio(rule, value, indicator.higher_is_better, indicator.id)


def linear_deduction(rule: LinearDeduction, value: float, higher_is_better: bool) -> float:
    gap = rule.target - value if higher_is_better else value - rule.target
    return max(0.0, 100 - rule.points * max(0.0, gap) / rule.per)


def ratio(rule: Ratio, value: float, higher_is_better: bool, indicator_id: str) -> float:
    if value < 0:
        # A negative rate or duration has no meaning and would score below zero: bad data.
        raise InvalidInput(
            [
                Problem(
                    f"metric value {value} is negative; the ratio rule needs a value >= 0",
                    field=f"indicators.{indicator_id}",
                )
            ]
        )
    if higher_is_better:
        return min(rule.cap, 100 * value / rule.target)
    if value == 0:
        return rule.cap
    return min(rule.cap, 100 * rule.target / value)


def veto_triggered(indicator: VetoIndicator, value: float) -> bool:
    return value > indicator.trigger.above


def score_bars(
    indicator: RatedIndicator, by_type: Mapping[str, tuple[int, int]], policy: Policy
) -> float | None:
    """Rater-type-weighted mean of each type's mean score, times 20; None if nobody answered."""
    allowed = set(indicator.raters) if indicator.raters is not None else None
    weighted: list[tuple[float, float]] = []
    # Policy order, so the float sum is the same whichever way the ratings were gathered. Rater
    # types the policy gives no weight have no say.
    for rater_type, rule in policy.raters.items():
        if allowed is not None and rater_type not in allowed:
            continue
        total, count = by_type.get(rater_type.value, (0, 0))
        if count > 0:
            weighted.append((rule.weight, total / count))
    if not weighted:
        return None
    return weighted_mean(weighted) * 20


# ---------------------------------------------------------------- helpers


def weighted_mean(pairs: Sequence[tuple[float, float]]) -> float:
    """Mean of (weight, value) pairs, weights renormalised over the pairs given."""
    return math.fsum(w * v for w, v in pairs) / math.fsum(w for w, _ in pairs)


def metric_value(indicator_id: str, metric: str, metrics: Mapping[str, float]) -> float | None:
    value = metrics.get(metric)
    if value is None:
        return None
    if not math.isfinite(value):
        raise InvalidInput(
            [
                Problem(
                    f"metric {metric!r} is {value}; a score needs a finite number",
                    field=f"indicators.{indicator_id}",
                )
            ]
        )
    return float(value)


def totals_of(
    ratings: Mapping[str, Mapping[str, Sequence[int]]],
) -> dict[str, dict[str, tuple[int, int]]]:
    """Raw 1-5 scores -> (sum, count) per item and rater type; rejects scores outside 1-5."""
    problems = [
        Problem(f"score {s!r} is outside {MIN_RATING}-{MAX_RATING}", field=f"{item}.{rater_type}")
        for item, by_type in ratings.items()
        for rater_type, scores in by_type.items()
        for s in scores
        if not (isinstance(s, int) and MIN_RATING <= s <= MAX_RATING)
    ]
    if problems:
        raise InvalidInput(problems)
    return {
        item: {rater_type: (sum(scores), len(scores)) for rater_type, scores in by_type.items()}
        for item, by_type in ratings.items()
    }
