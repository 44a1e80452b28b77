"""Improvement-plan stage: goal, actions, deadline, owner, monthly follow-up, effect verified.

Everyone whose (calibrated) grade is in policy.improvement.grades gets a plan owned by their
manager. open -> closed by the owner with the verified effect; still open at close -> lapsed.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import Problem
from perfcycle.domain import access, audit
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    Cycle,
    Employee,
    ImprovementPlan,
    Participant,
    PlanCheckin,
    Result,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.base import (
    PendingTask,
    Progress,
    RecordKind,
    StageContext,
    state_problems,
)
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, hr_standing_in, notify

STATES = ("open", "closed", "lapsed")
WEAKEST_COUNT = 2
MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
ACTION_KEYS = {"action", "due"}
PLAN = RecordKind(
    ImprovementPlan,
    stage=StageName.improvement.value,
    states=STATES,
    noun="improvement plan",
    subject="improvement_plan",
    id_field="plan_id",
    fields=("state", "goal", "actions", "effect_verified", "outcome", "closed_at"),
)


class Handler:
    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy, stage = ctx.session, ctx.cycle, ctx.policy, ctx.stage
        deadline = add_months(stage.opened_at.date(), policy.improvement.months)
        created = _create_plans(session, cycle, policy, deadline)
        return PLAN.opened(
            ctx,
            created,
            action="improvement.plans_created",
            counted_as="plans_created",
            noted={"deadline": deadline.isoformat()},
            event="improvement_plan_created",
            recipients=_created_recipients(session, cycle, stage),
            occurrence="improvement",
        )

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle = ctx.session, ctx.cycle
        counts = PLAN.count_by_state(session, cycle.id)
        return Progress(done=counts["closed"], total=sum(counts.values()))

    def pending(self, ctx: StageContext) -> dict[str, list[PendingTask]]:
        """Owners of open plans: each plan is closed once its effect is verified."""
        session, cycle = ctx.session, ctx.cycle
        todo: dict[str, list[PendingTask]] = {}
        for plan_id, owner_id, name in session.execute(
            select(ImprovementPlan.id, ImprovementPlan.owner_id, Employee.name)
            .join(Employee, Employee.id == ImprovementPlan.employee_id)
            .where(ImprovementPlan.cycle_id == cycle.id, ImprovementPlan.state == "open")
            .order_by(ImprovementPlan.owner_id, ImprovementPlan.employee_id)
        ).tuples():
            if owner_id is None:
                continue  # HR follows the plan up: a mailing list, not a person with tasks
            todo.setdefault(owner_id, []).append(
                PendingTask(
                    Role.owner, "close_plan", "improvement_plan", f"plan:{plan_id}", (name,)
                )
            )
        return todo

    def close(self, ctx: StageContext) -> dict[str, Any]:
        return PLAN.close(ctx, unfinished="open", closed_as="lapsed")


def add_months(day: date, months: int) -> date:
    """Calendar months; a day the target month lacks (31 Jan + 1) becomes its last day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def weakest_goal(indicators: dict[str, Any], policy: Policy, locale: str) -> str:
    """The pre-filled goal: raise the lowest-scored indicators, named as the policy names them."""
    names = {i.id: i.name.get(locale) for i in policy.indicators}
    scored = sorted(
        (float(score), indicator_id)
        for indicator_id, score in indicators.items()
        if isinstance(score, int | float) and not isinstance(score, bool)
    )
    weakest = [(names.get(i, i), score) for score, i in scored[:WEAKEST_COUNT]]
    zh = locale.lower().startswith("zh")
    if not weakest:
        return "提升整体绩效" if zh else "Raise overall performance"
    if zh:
        return "提升" + "、".join(f"{name}（当前得分 {score:.1f}）" for name, score in weakest)
    return "Raise " + " and ".join(f"{name} (scored {score:.1f})" for name, score in weakest)


def _create_plans(session: Session, cycle: Cycle, policy: Policy, deadline: date) -> list[str]:
    """Insert the missing plans; returns the employee ids that got one now."""
    existing = set(
        session.scalars(
            select(ImprovementPlan.employee_id).where(ImprovementPlan.cycle_id == cycle.id)
        )
    )
    candidates = session.execute(
        select(Participant.employee_id, Participant.manager_id, Result.indicators, Employee.locale)
        .join(
            Result,
            (Result.cycle_id == Participant.cycle_id)
            & (Result.employee_id == Participant.employee_id),
        )
        .join(Employee, Employee.id == Participant.employee_id)
        .where(
            Participant.cycle_id == cycle.id,
            Result.grade.in_(policy.improvement.grades),
        )
        .order_by(Participant.employee_id)
    )
    rows = [
        {
            "cycle_id": cycle.id,
            "employee_id": employee_id,
            "owner_id": manager_id,
            "goal": weakest_goal(indicators or {}, policy, locale),
            "actions": [],
            "deadline": deadline,
            "state": "open",
            "outcome": "",
        }
        for employee_id, manager_id, indicators, locale in candidates
        if employee_id not in existing
    ]
    insert_ignore(session, ImprovementPlan.__table__, rows)  # type: ignore[arg-type]
    return [r["employee_id"] for r in rows]


def _created_recipients(session: Session, cycle: Cycle, stage: StageInstance) -> list[Recipient]:
    """The employee and the plan's owner each learn that the plan exists and what it says."""
    emp = aliased(Employee)
    owner = aliased(Employee)
    rows = session.execute(
        select(ImprovementPlan, emp, owner)
        .join(emp, emp.id == ImprovementPlan.employee_id)
        .outerjoin(owner, owner.id == ImprovementPlan.owner_id)
        .where(ImprovementPlan.cycle_id == cycle.id)
        .order_by(ImprovementPlan.employee_id)
    ).all()
    occurrence = f"improvement:{stage.attempt}"
    recipients: list[Recipient] = []
    for plan, employee, manager in rows:
        context = {
            "plan_id": plan.id,
            "employee_id": employee.id,
            "employee_name": employee.name,
            "owner_name": manager.name if manager is not None and manager.active else None,
            "goal": plan.goal,
            "deadline": plan.deadline.isoformat(),
        }
        people = [(Role.employee, employee)]
        if manager is not None and manager.active:
            people.append((Role.owner, manager))
        else:
            # Nobody owns the plan (no manager, or one who left): HR coaches it, as with the
            # monthly check-ins, so HR hears of it now rather than at the first check-in.
            recipients.append(
                hr_standing_in(Role.owner, context=context, occurrence=f"{occurrence}:{plan.id}")
            )
        recipients += [
            Recipient.person(
                role,
                person,
                context=context,
                link=TaskLink("improvement_plan", f"plan:{plan.id}"),
                # An owner with several plans gets one mail per plan: the key names the plan.
                occurrence=f"{occurrence}:{plan.id}",
            )
            for role, person in people
        ]
    return recipients


# ---------------------------------------------------------------- services


def update_plan(
    session: Session, plan_id: int, *, goal: str, actions: list[dict[str, Any]], actor: Actor
) -> ImprovementPlan:
    """Owner or employee write down the agreed goal and the actions (each with a due date)."""
    plan = PLAN.get(session, plan_id)
    problems = access.refusals(access.plan_party_refusal(actor, plan)) + _state_problems(plan)
    if not isinstance(goal, str) or not goal.strip():
        problems.append(Problem("a goal is required", field="goal"))
    clean_actions, action_problems = _parse_actions(actions, plan.deadline)
    problems += action_problems
    access.raise_problems(problems)

    return PLAN.transition(
        session,
        plan,
        actor=actor.name,
        action="improvement.plan_updated",
        changes={"goal": goal.strip(), "actions": clean_actions},
    )


def record_checkin(
    session: Session, plan_id: int, *, month: str, progress: int, note: str, actor: Actor
) -> PlanCheckin:
    """The monthly follow-up; a second check-in for the same month replaces the first."""
    plan = PLAN.get(session, plan_id)
    problems = access.refusals(access.plan_party_refusal(actor, plan)) + _state_problems(plan)
    problems += _check_month(session, plan, month)
    if isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= 100:
        problems.append(
            Problem(f"progress must be a whole number 0..100, got {progress!r}", field="progress")
        )
    if not isinstance(note, str):
        problems.append(Problem("the note must be text", field="note"))
    access.raise_problems(problems)

    checkin = session.scalar(
        select(PlanCheckin).where(PlanCheckin.plan_id == plan.id, PlanCheckin.month == month)
    )
    before = _checkin_snapshot(checkin) if checkin else None
    if checkin is None:
        checkin = PlanCheckin(plan_id=plan.id, month=month)
        session.add(checkin)
    checkin.progress = progress
    checkin.note = note.strip()
    checkin.recorded_by = actor.name
    checkin.recorded_at = clock.now()
    session.flush()
    audit.record(
        session,
        actor=actor.name,
        action="improvement.checkin_recorded" if before is None else "improvement.checkin_updated",
        subject=f"improvement_plan:{plan.id}:checkin:{month}",
        cycle_id=plan.cycle_id,
        before=before,
        after=_checkin_snapshot(checkin),
    )
    return checkin


def close_plan(
    session: Session, plan_id: int, *, effect_verified: bool, outcome: str, actor: Actor
) -> ImprovementPlan:
    """The owner closes the plan, saying whether its effect was verified and what came of it."""
    plan = PLAN.get(session, plan_id)
    problems = access.refusals(access.plan_owner_refusal(actor, plan)) + _state_problems(plan)
    if not isinstance(effect_verified, bool):
        problems.append(
            Problem(f"must be true or false, got {effect_verified!r}", field="effect_verified")
        )
    if not isinstance(outcome, str) or not outcome.strip():
        problems.append(Problem("an outcome is required", field="outcome"))
    access.raise_problems(problems)

    PLAN.transition(
        session,
        plan,
        actor=actor.name,
        action="improvement.plan_closed",
        changes={
            "state": "closed",
            "effect_verified": effect_verified,
            "outcome": outcome.strip(),
            "closed_at": clock.now(),
        },
    )
    _notify_closed(session, plan)
    return plan


def _state_problems(plan: ImprovementPlan) -> list[Problem]:
    # A plan lives to its own deadline (months), not to a stage's: only its state counts.
    return state_problems(
        plan.state, ("open",), "the plan is {state}; only an open plan can be changed"
    )


def _parse_actions(actions: Any, deadline: date) -> tuple[list[dict[str, str]], list[Problem]]:
    """Each action is {"action": text, "due": "YYYY-MM-DD" or date} due by the plan's deadline."""
    if not isinstance(actions, list):
        return [], [Problem("actions must be a list of {action, due}", field="actions")]
    clean: list[dict[str, str]] = []
    problems: list[Problem] = []
    for n, item in enumerate(actions):
        where = f"actions[{n}]"
        if not isinstance(item, dict):
            problems.append(Problem("must be an object with action and due", field=where))
            continue
        unknown = sorted(set(item) - ACTION_KEYS)
        if unknown:
            problems.append(Problem(f"unknown keys {', '.join(unknown)}", field=where))
        text = item.get("action")
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem("the action's text is required", field=f"{where}.action"))
        due = _parse_date(item.get("due"))
        if due is None:
            problems.append(
                Problem(f"must be a date YYYY-MM-DD, got {item.get('due')!r}", field=f"{where}.due")
            )
        elif due > deadline:
            problems.append(
                Problem(
                    f"{due.isoformat()} is after the plan's deadline {deadline.isoformat()}",
                    field=f"{where}.due",
                )
            )
        if isinstance(text, str) and due is not None:
            clean.append({"action": text.strip(), "due": due.isoformat()})
    return clean, problems


def _parse_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _check_month(session: Session, plan: ImprovementPlan, month: Any) -> list[Problem]:
    """A check-in belongs to a month between the plan's start and the current month."""
    if not isinstance(month, str) or not MONTH_RE.match(month):
        return [Problem(f"must be a month YYYY-MM, got {month!r}", field="month")]
    current = clock.now().strftime("%Y-%m")
    if month > current:
        return [Problem(f"{month} has not started yet (it is {current})", field="month")]
    opened = session.scalar(
        select(StageInstance.opened_at).where(
            StageInstance.cycle_id == plan.cycle_id,
            StageInstance.name == StageName.improvement,
        )
    )
    if opened is not None and month < opened.strftime("%Y-%m"):
        return [
            Problem(
                f"{month} is before the plan started ({opened.strftime('%Y-%m')})", field="month"
            )
        ]
    return []


def _checkin_snapshot(checkin: PlanCheckin) -> dict[str, Any]:
    return {
        "month": checkin.month,
        "progress": checkin.progress,
        "note": checkin.note,
        "recorded_by": checkin.recorded_by,
    }


def _notify_closed(session: Session, plan: ImprovementPlan) -> None:
    """The employee learns the plan is closed and whether its effect was verified."""
    employee = session.get_one(Employee, plan.employee_id)
    cycle = session.get_one(Cycle, plan.cycle_id)
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        "improvement_plan_closed",
        [Recipient.person(Role.employee, employee)],
        f"plan-closed:{plan.id}",
        {
            "plan_id": plan.id,
            "effect_verified": plan.effect_verified,
            "outcome": plan.outcome,
        },
    )
