"""Target setting: each participant's indicators become goals that employee and manager sign.

Closed loop, step one (目标设定): the policy's indicators and targets are proposed; the employee
submits (signs); the manager approves (signs) or returns them with a comment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access, audit
from perfcycle.domain.access import Actor, manager_in_cycle
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import (
    AuditEvent,
    Cycle,
    Employee,
    Goal,
    Participant,
    StageName,
)
from perfcycle.domain.policy.schema import MetricIndicator, Policy, Ratio
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.base import PendingTask, Progress, StageContext
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import (
    Recipient,
    TaskLink,
    hr_standing_in,
    notify,
    stage_of,
)


class Handler:
    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy, stage = ctx.session, ctx.cycle, ctx.policy, ctx.stage
        weights = {c.id: c.weight for c in policy.categories}
        people = session.execute(
            select(Participant.employee_id, Employee.email, Employee.locale, Employee.name)
            .join(Employee, Employee.id == Participant.employee_id)
            .where(Participant.cycle_id == cycle.id)
        ).all()
        rows = [
            {
                "cycle_id": cycle.id,
                "employee_id": p.employee_id,
                "indicator_id": ind.id,
                "category": ind.category,
                "title": ind.name.get(p.locale),
                "target": ind.rule.target if isinstance(ind, MetricIndicator) else None,
                # Overall weight in percent of the total, as the employee reads it.
                "weight": weights[ind.category] * ind.weight / 100,
                "locked": ind.locked if isinstance(ind, MetricIndicator) else True,
                "state": "proposed",
            }
            for p in people
            for ind in policy.indicators
        ]
        created = insert_ignore(session, Goal.__table__, rows)  # type: ignore[arg-type]
        link = TaskLink("goals", f"target_setting:{stage.attempt}")
        mails = notify(
            session,
            cycle,
            policy,
            "goals_to_agree",
            [
                Recipient(Role.employee, p.email, p.locale, p.name, p.employee_id, link=link)
                for p in people
            ],
            f"target_setting:{stage.attempt}",
            {"indicators": len(policy.indicators)},
            due_at=stage.due_at,
        )
        if created:
            audit.record(
                session,
                actor=audit.SYSTEM,
                action="goals.proposed",
                subject=f"cycle:{cycle.id}",
                cycle_id=cycle.id,
                after={"goals": created, "participants": len(people)},
            )
        return {"goals_created": created, "mails_enqueued": mails}

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle = ctx.session, ctx.cycle
        total = (
            session.scalar(
                select(func.count())
                .select_from(Participant)
                .where(Participant.cycle_id == cycle.id)
            )
            or 0
        )
        not_done = (
            session.scalar(
                select(func.count(func.distinct(Goal.employee_id))).where(
                    Goal.cycle_id == cycle.id, Goal.state != "agreed"
                )
            )
            or 0
        )
        return Progress(done=total - not_done, total=total)

    def pending(self, ctx: StageContext) -> dict[str, list[PendingTask]]:
        """Employees who have not submitted; managers with submitted goals to approve."""
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        rows = session.execute(
            select(Goal.employee_id, Goal.state, Participant.manager_id, Employee.name)
            .join(
                Participant,
                (Participant.cycle_id == Goal.cycle_id)
                & (Participant.employee_id == Goal.employee_id),
            )
            .join(Employee, Employee.id == Goal.employee_id)
            .where(Goal.cycle_id == cycle.id, Goal.state != "agreed")
            .distinct()
            .order_by(Goal.employee_id)
        ).all()
        unsigned = {r.employee_id for r in rows if r.state == "proposed"}
        to_approve: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            # Without a manager HR approves: a mailing list, not a person with tasks.
            if r.employee_id not in unsigned and r.manager_id is not None:
                to_approve[r.manager_id].add(r.name)
        ref = f"target_setting:{stage.attempt}"
        todo: dict[str, list[PendingTask]] = defaultdict(list)
        for employee_id in sorted(unsigned):
            todo[employee_id].append(PendingTask(Role.employee, "submit_goals", "goals", ref))
        for manager_id, names in sorted(to_approve.items()):
            todo[manager_id].append(
                PendingTask(
                    Role.manager, "approve_goals", "goals_approval", ref, tuple(sorted(names))
                )
            )
        return dict(todo)

    def close(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle = ctx.session, ctx.cycle
        # At the deadline the policy's targets apply as proposed: the cycle cannot stall on
        # an unsigned form, and the missing signatures stay visible.
        defaulted = session.execute(  # type: ignore[attr-defined]
            update(Goal)
            .where(Goal.cycle_id == cycle.id, Goal.state != "agreed")
            .values(state="agreed")
        ).rowcount
        signed = (
            session.scalar(
                select(func.count(func.distinct(Goal.employee_id))).where(
                    Goal.cycle_id == cycle.id, Goal.manager_signed_at.is_not(None)
                )
            )
            or 0
        )
        return {"agreed_by_both": signed, "goals_defaulted": defaulted or 0}


def _goals(session: Session, cycle_id: int, employee_id: str) -> list[Goal]:
    goals = list(
        session.scalars(
            select(Goal).where(Goal.cycle_id == cycle_id, Goal.employee_id == employee_id)
        )
    )
    if not goals:
        raise InvalidInput(
            [Problem(f"{employee_id} has no goals in cycle {cycle_id}", field="employee_id")]
        )
    return goals


def submit_goals(session: Session, cycle_id: int, employee_id: str, *, actor: Actor) -> None:
    """The employee signs their goals and sends them to the manager."""
    accepting_work(session, cycle_id, StageName.target_setting)
    access.require_own_goals(actor, employee_id, "submit")
    goals = _goals(session, cycle_id, employee_id)
    if all(g.state == "agreed" for g in goals):
        raise InvalidInput([Problem("goals are already agreed", field="state")])
    policy = cycle_policy_or_none(session.get_one(Cycle, cycle_id))
    if policy is not None:
        _check_personal_share(policy, [g for g in goals if g.kind == PERSONAL])
    now = clock.now()
    for g in goals:
        g.state, g.employee_signed_at = "submitted", now
    submitted_before = _times(session, "goals.submitted", cycle_id, employee_id)
    audit.record(
        session,
        actor=actor.name,
        action="goals.submitted",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        after={"goals": len(goals)},
    )
    _mail_approver(session, cycle_id, employee_id, len(goals), submitted_before + 1)


def _times(session: Session, action: str, cycle_id: int, employee_id: str) -> int:
    """How often `action` happened to the employee's sheet before (its audit events): a mail
    about the n-th submission or return is keyed by n, so each one is sent once."""
    found = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.action == action,
            AuditEvent.subject == f"cycle:{cycle_id}/employee:{employee_id}",
        )
    )
    return found or 0


def _mail_approver(
    session: Session, cycle_id: int, employee_id: str, goals: int, submission: int
) -> None:
    """The manager learns there is a sheet to approve (HR, for someone without a manager); one
    mail per submission, so a sheet returned and signed again is announced again."""
    cycle = session.get_one(Cycle, cycle_id)
    stage = stage_of(session, cycle_id, StageName.target_setting)
    employee = session.get_one(Employee, employee_id)
    manager_id = manager_in_cycle(session, cycle_id, employee_id)
    manager = session.get(Employee, manager_id) if manager_id else None
    context = {"employee_id": employee_id, "employee_name": employee.name, "goals": goals}
    if manager is not None and manager.active:
        link = TaskLink("goals_approval", f"target_setting:{stage.attempt if stage else 1}")
        recipient = Recipient.person(Role.manager, manager, link=link)
    else:
        recipient = hr_standing_in(Role.manager, context={"hr_stands_in": True})
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        "goals_submitted",
        [recipient],
        f"goals-submitted:{employee_id}:{submission}",
        context,
        due_at=stage.due_at if stage else None,
    )


def approve_goals(session: Session, cycle_id: int, employee_id: str, *, actor: Actor) -> None:
    """The manager (or HR, for someone without a manager) signs; the agreement is recorded."""
    accepting_work(session, cycle_id, StageName.target_setting)
    access.require_goal_approver(session, actor, cycle_id, employee_id)
    goals = _goals(session, cycle_id, employee_id)
    if any(g.state != "submitted" for g in goals):
        raise InvalidInput(
            [Problem("goals must be submitted by the employee first", field="state")]
        )
    now = clock.now()
    for g in goals:
        g.state, g.manager_signed_at = "agreed", now
    audit.record(
        session,
        actor=actor.name,
        action="goals.agreed",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        before={"state": "submitted"},
        after={"state": "agreed", "goals": len(goals)},
    )


def return_goals(
    session: Session, cycle_id: int, employee_id: str, *, comment: str, actor: Actor
) -> None:
    accepting_work(session, cycle_id, StageName.target_setting)
    access.require_goal_approver(session, actor, cycle_id, employee_id)
    if not comment.strip():
        raise InvalidInput(
            [Problem("say why the goals are returned", field="comment", code="return_reason")]
        )
    goals = _goals(session, cycle_id, employee_id)
    if any(g.state != "submitted" for g in goals):
        raise InvalidInput([Problem("only submitted goals can be returned", field="state")])
    for g in goals:
        g.state, g.employee_signed_at = "proposed", None
    employee = session.get(Employee, employee_id)
    assert employee is not None
    returned_before = _times(session, "goals.returned", cycle_id, employee_id)
    audit.record(
        session,
        actor=actor.name,
        action="goals.returned",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        before={"state": "submitted"},
        after={"state": "proposed", "comment": comment},
    )
    cycle = session.get_one(Cycle, cycle_id)
    stage = stage_of(session, cycle_id, StageName.target_setting)
    link = TaskLink("goals", f"target_setting:{stage.attempt if stage else 1}")
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        "goals_returned",
        [Recipient.person(Role.employee, employee, link=link)],
        f"goals-returned:{returned_before + 1}",
        {"comment": comment},
        due_at=stage.due_at if stage else None,
    )


# ---------------------------------------------------------------- the employee's own changes

PERSONAL = "personal"
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
    goals = _own_editable_goals(session, cycle_id, employee_id, actor)
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
    goals = _own_editable_goals(session, cycle_id, employee_id, actor)
    at = f"target.{indicator_id}"
    goal = next((g for g in goals if g.indicator_id == indicator_id and g.kind != PERSONAL), None)
    if goal is None:
        raise InvalidInput([Problem(f"no indicator {indicator_id!r} on this sheet", field=at)])
    if goal.locked:
        raise InvalidInput(
            [Problem("the policy locks this target; it cannot change", field=at, code="locked")]
        )
    problems: list[Problem] = []
    value = _number(target, at, problems)
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


@dataclass(frozen=True)
class Returned:
    """The manager's latest return of a goal sheet: who, when and why."""

    by: str
    at: datetime
    comment: str


def last_return(session: Session, cycle_id: int, employee_id: str) -> Returned | None:
    """Why the sheet was last sent back, or None if it never was.

    The comment is kept only in the audit event of the return (the record of who said what),
    so this reads it from there rather than keeping a second copy on the goals.
    """
    event = session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.action == "goals.returned",
            AuditEvent.subject == f"cycle:{cycle_id}/employee:{employee_id}",
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).first()
    if event is None:
        return None
    return Returned(event.actor, event.at, str((event.after or {}).get("comment", "")))


def _own_editable_goals(
    session: Session, cycle_id: int, employee_id: str, actor: Actor
) -> list[Goal]:
    accepting_work(session, cycle_id, StageName.target_setting)
    access.require_own_goals(actor, employee_id, "change")
    goals = _goals(session, cycle_id, employee_id)
    if any(g.state != "proposed" for g in goals):
        state = next(g.state for g in goals if g.state != "proposed")
        raise InvalidInput(
            [Problem(f"the goals are {state}; they can change only before signing", field="state")]
        )
    return goals


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
    fields["target"] = _number(row.get("target", ""), f"{at}.target", problems)
    weight = _number(row.get("weight", ""), f"{at}.weight", problems)
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


def _number(text: object, at: str, problems: list[Problem]) -> float | None:
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


def _check_personal_share(policy: Policy, personal: Sequence[Goal]) -> None:
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
