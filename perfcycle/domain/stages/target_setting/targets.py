"""Targets the employee proposes for the indicators the policy leaves unlocked."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.access import Actor
from perfcycle.domain.models import Cycle, Goal
from perfcycle.domain.policy.schema import MetricIndicator, Ratio
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.target_setting.goals import PERSONAL, own_editable_goals
from perfcycle.domain.stages.target_setting.personal_goals import number


def set_target(
    session: Session,
    cycle_id: int,
    employee_id: str,
    indicator_id: str,
    target: str,
    *,
    actor: Actor,
) -> None:
    """The employee proposes their own target for an indicator the policy leaves unlocked."""
    goals = own_editable_goals(session, cycle_id, employee_id, actor)
    at = f"target.{indicator_id}"
    goal = next((g for g in goals if g.indicator_id == indicator_id and g.kind != PERSONAL), None)
    if goal is None:
        raise InvalidInput([Problem(f"no indicator {indicator_id!r} on this sheet", field=at)])
    if goal.locked:
        raise InvalidInput(
            [Problem("the policy locks this target; it cannot change", field=at, code="locked")]
        )
    problems: list[Problem] = []
    value = number(target, at, problems)
    policy = cycle_policy_or_none(session.get_one(Cycle, cycle_id))
    indicators = policy.indicators if policy else []
    indicator = next((i for i in indicators if i.id == indicator_id), None)
    ratio = isinstance(indicator, MetricIndicator) and isinstance(indicator.rule, Ratio)
    if value is not None and ratio and value <= 0:
        problems.append(
            Problem("must be above 0 (the score is a ratio to it)", field=at, code="above_zero")
        )
    if problems or value is None:
        raise InvalidInput(problems)
    audit.record(
        session,
        actor=actor.name,
        action="goals.target_set",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        before={"indicator": indicator_id, "target": goal.target},
        after={"indicator": indicator_id, "target": value},
    )
    goal.target = value


def agreed_targets(session: Session, cycle_id: int) -> dict[str, dict[str, float]]:
    """employee -> indicator -> the target agreed for an unlocked indicator (scoring uses it)."""
    rows = session.execute(
        select(Goal.employee_id, Goal.indicator_id, Goal.target).where(
            Goal.cycle_id == cycle_id,
            Goal.kind != PERSONAL,
            Goal.locked.is_(False),
            Goal.state == "agreed",
            Goal.target.is_not(None),
        )
    )
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for employee_id, indicator_id, target in rows:
        out[employee_id][indicator_id] = target
    return dict(out)
