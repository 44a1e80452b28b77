"""The employee's own SMART goals: saved with the sheet, rated on the superior's form."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.access import Actor
from perfcycle.domain.models import Cycle, Goal
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.target_setting.goals import PERSONAL, own_editable_goals

PERSONAL_FIELDS = ("title", "measure", "target", "deadline", "weight")
# Like a rated item's default: the extremes of a judgement must be explained.
GOAL_COMMENT_REQUIRED_FOR = (1, 5)


@dataclass(frozen=True)
class PersonalGoalItem:
    """A ratee's agreed personal SMART goal as an item of the superior's form (attainment 1-5).

    `id` is the goal's indicator id (personal-1, ...): answers are stored and scored under it.
    """

    id: str
    title: str
    measure: str
    target: float
    deadline: date
    weight: float
    comment_required_for: tuple[int, ...] = GOAL_COMMENT_REQUIRED_FOR


TEXT_CHARS = (3, 500)
WEIGHT_TOLERANCE = 0.01  # percent; weights are typed with at most two decimals


def save_personal_goals(
    session: Session,
    cycle_id: int,
    employee_id: str,
    rows: Sequence[Mapping[str, str]],
    *,
    actor: Actor,
) -> int:
    """Replace the employee's personal SMART goals with `rows` (as typed: title, measure,
    target, deadline, weight); rows left blank are dropped. All or nothing: any problem names
    its row and field (`personal.2.deadline`) and nothing changes. Returns how many are kept.

    The goals' weights must add up to the policy's personal share; the indicators of that
    category give up the same share, so the employee's sheet still adds up to 100.
    """
    cycle = session.get_one(Cycle, cycle_id)
    policy = cycle_policy_or_none(cycle)
    share = policy.personal_goals if policy else None
    goals = own_editable_goals(session, cycle_id, employee_id, actor)
    if policy is None or share is None or share.max == 0:
        raise InvalidInput([Problem("this cycle's policy has no personal goals", field="personal")])
    # Problems name the row as the form numbers it, blank rows included.
    filled = [
        (n, row)
        for n, row in enumerate(rows, 1)
        if any(str(row.get(f, "")).strip() for f in PERSONAL_FIELDS)
    ]
    problems: list[Problem] = []
    if len(filled) > share.max:
        problems.append(
            Problem(
                f"at most {share.max} personal goals, got {len(filled)}",
                field="personal",
                code="too_many_goals",
                values=(("max", share.max), ("got", len(filled))),
            )
        )
    parsed = [_parse_personal(cycle, n, row, problems) for n, row in filled]
    if not problems and parsed:
        _weights_add_up(share.weight, [g["weight"] for g in parsed], problems)
    if problems:
        raise InvalidInput(problems)

    before = [_personal_view(g) for g in goals if g.kind == PERSONAL]
    session.execute(
        delete(Goal).where(
            Goal.cycle_id == cycle_id, Goal.employee_id == employee_id, Goal.kind == PERSONAL
        )
    )
    for n, fields in enumerate(parsed, 1):
        session.add(
            Goal(
                cycle_id=cycle_id,
                employee_id=employee_id,
                indicator_id=f"personal-{n}",
                kind=PERSONAL,
                category=share.category,
                locked=False,
                state="proposed",
                **fields,
            )
        )
    _rebalance_category(policy, [g for g in goals if g.kind != PERSONAL], bool(parsed))
    session.flush()
    audit.record(
        session,
        actor=actor.name,
        action="goals.personal_saved",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        before={"personal": before},
        after={"personal": [{**f, "deadline": f["deadline"].isoformat()} for f in parsed]},
    )
    return len(parsed)


def personal_goal_items(
    session: Session, cycle_id: int, employee_ids: Sequence[str] | None = None
) -> dict[str, list[PersonalGoalItem]]:
    """employee -> their agreed personal goals (all participants' when `employee_ids` is None).

    Only agreed goals: a goal the manager has not signed is not yet something to be rated on.
    """
    query = select(Goal).where(
        Goal.cycle_id == cycle_id, Goal.kind == PERSONAL, Goal.state == "agreed"
    )
    if employee_ids is not None:
        query = query.where(Goal.employee_id.in_(sorted(set(employee_ids))))
    out: dict[str, list[PersonalGoalItem]] = defaultdict(list)
    for g in session.scalars(query.order_by(Goal.employee_id, Goal.id)):
        # The schema guarantees a personal goal's measure, target and deadline.
        out[g.employee_id].append(
            PersonalGoalItem(
                g.indicator_id,
                g.title,
                g.measure or "",
                g.target if g.target is not None else 0.0,
                g.deadline or date.min,
                g.weight,
            )
        )
    return dict(out)


def _parse_personal(
    cycle: Cycle, n: int, row: Mapping[str, str], problems: list[Problem]
) -> dict[str, Any]:
    at = f"personal.{n}"
    fields: dict[str, Any] = {}
    for name in ("title", "measure"):
        text = str(row.get(name, "")).strip()
        low, high = TEXT_CHARS
        if not low <= len(text) <= high:
            problems.append(
                Problem(
                    f"needs {low} to {high} characters",
                    field=f"{at}.{name}",
                    code="text_length",
                    values=(("low", low), ("high", high)),
                )
            )
        fields[name] = text
    fields["target"] = number(row.get("target", ""), f"{at}.target", problems)
    weight = number(row.get("weight", ""), f"{at}.weight", problems)
    if weight is not None and weight <= 0:
        problems.append(Problem("must be above 0", field=f"{at}.weight", code="above_zero"))
    fields["weight"] = weight
    raw = str(row.get("deadline", "")).strip()
    try:
        deadline = date.fromisoformat(raw)
    except ValueError:
        message = f"expected a date like 2026-12-31, got {raw!r}"
        problems.append(
            Problem(message, field=f"{at}.deadline", code="not_a_date", values=(("value", raw),))
        )
        deadline = None
    if deadline is not None and not cycle.period_start <= deadline <= cycle.period_end:
        problems.append(
            Problem(
                f"must fall within the period {cycle.period_start} .. {cycle.period_end}",
                field=f"{at}.deadline",
                code="date_in_period",
                values=(("start", cycle.period_start), ("end", cycle.period_end)),
            )
        )
    fields["deadline"] = deadline
    return fields


def number(text: object, at: str, problems: list[Problem]) -> float | None:
    raw = str(text).strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        problems.append(
            Problem(
                f"expected a number, got {str(text)!r}",
                field=at,
                code="not_a_number",
                values=(("value", str(text)),),
            )
        )
        return None
    if not math.isfinite(value):
        problems.append(
            Problem(
                f"expected a finite number, got {raw}",
                field=at,
                code="not_a_number",
                values=(("value", raw),),
            )
        )
        return None
    return value


def _weights_add_up(share: float, weights: Sequence[float], problems: list[Problem]) -> None:
    total = math.fsum(weights)
    if abs(total - share) > WEIGHT_TOLERANCE:
        problems.append(
            Problem(
                f"personal goal weights add up to {total:g}%, must be {share:g}%",
                field="personal.weight",
                code="weights_sum",
                values=(("total", f"{total:g}"), ("share", f"{share:g}")),
            )
        )


def check_personal_share(policy: Policy, personal: Sequence[Goal]) -> None:
    share = policy.personal_goals
    problems: list[Problem] = []
    if len(personal) < share.min:
        problems.append(
            Problem(
                f"add at least {share.min} personal goals before signing",
                field="personal",
                code="too_few_goals",
                values=(("min", share.min),),
            )
        )
    if personal:
        _weights_add_up(share.weight, [g.weight for g in personal], problems)
    if problems:
        raise InvalidInput(problems)


def _rebalance_category(policy: Policy, indicator_goals: Sequence[Goal], personal: bool) -> None:
    """Indicator goals' weights, with (or without) the personal share taken from their category."""
    share = policy.personal_goals
    weights = {c.id: c.weight for c in policy.categories}
    by_id = {i.id: i for i in policy.indicators}
    for g in indicator_goals:
        ind = by_id.get(g.indicator_id)
        if ind is None:
            continue
        category = weights[ind.category]
        kept = category - share.weight if personal and ind.category == share.category else category
        g.weight = kept * ind.weight / 100


def _personal_view(g: Goal) -> dict[str, Any]:
    return {
        "title": g.title,
        "measure": g.measure,
        "target": g.target,
        "deadline": g.deadline.isoformat() if g.deadline else None,
        "weight": g.weight,
    }
