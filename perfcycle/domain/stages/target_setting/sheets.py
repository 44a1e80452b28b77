"""Signing a goal sheet: the employee submits, the manager (or HR) approves or returns it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access, audit
from perfcycle.domain.access import Actor, manager_in_cycle
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import AuditEvent, Cycle, Employee, StageName
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.target_setting.goals import PERSONAL, sheet_goals
from perfcycle.domain.stages.target_setting.personal_goals import check_personal_share
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, hr_standing_in, notify, stage_of


def submit_goals(session: Session, cycle_id: int, employee_id: str, *, actor: Actor) -> None:
    """The employee signs their goals and sends them to the manager."""
    accepting_work(session, cycle_id, StageName.target_setting)
    access.require_own_goals(actor, employee_id, "submit")
    goals = sheet_goals(session, cycle_id, employee_id)
    if all(g.state == "agreed" for g in goals):
        raise InvalidInput([Problem("goals are already agreed", field="state")])
    policy = cycle_policy_or_none(session.get_one(Cycle, cycle_id))
    if policy is not None:
        check_personal_share(policy, [g for g in goals if g.kind == PERSONAL])
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
    goals = sheet_goals(session, cycle_id, employee_id)
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
    goals = sheet_goals(session, cycle_id, employee_id)
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
