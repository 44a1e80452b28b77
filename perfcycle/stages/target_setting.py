"""Target setting: each participant's indicators become goals that employee and manager sign.

Closed loop, step one (目标设定): the policy's indicators and targets are proposed; the employee
submits (signs); the manager approves (signs) or returns them with a comment.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from perfcycle import audit, clock
from perfcycle.db import insert_ignore
from perfcycle.errors import InvalidInput, Problem
from perfcycle.models import (
    AuditEvent,
    Cycle,
    Employee,
    Goal,
    Participant,
    StageInstance,
    StageName,
)
from perfcycle.notify import Recipient, TaskLink, notify, policy_of, stage_of
from perfcycle.policy import MetricIndicator, Policy, Role
from perfcycle.roles import is_hr
from perfcycle.stages.base import PendingTask, Progress


class Handler:
    def enter(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> dict[str, Any]:
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

    def progress(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> Progress:
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

    def pending(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> dict[str, list[PendingTask]]:
        """Employees who have not submitted; managers with submitted goals to approve."""
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

    def close(
        self, session: Session, cycle: Cycle, policy: Policy, stage: StageInstance
    ) -> dict[str, Any]:
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


def _manager_of(session: Session, cycle_id: int, employee_id: str) -> str | None:
    return session.scalar(
        select(Participant.manager_id).where(
            Participant.cycle_id == cycle_id, Participant.employee_id == employee_id
        )
    )


def submit_goals(session: Session, cycle_id: int, employee_id: str, *, actor: str) -> None:
    """The employee signs their goals and sends them to the manager."""
    if actor != employee_id:
        raise InvalidInput([Problem("only the employee can submit their own goals", field="actor")])
    goals = _goals(session, cycle_id, employee_id)
    if all(g.state == "agreed" for g in goals):
        raise InvalidInput([Problem("goals are already agreed", field="state")])
    now = clock.now()
    for g in goals:
        g.state, g.employee_signed_at = "submitted", now
    audit.record(
        session,
        actor=actor,
        action="goals.submitted",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        after={"goals": len(goals)},
    )


def approve_goals(session: Session, cycle_id: int, employee_id: str, *, actor: str) -> None:
    """The manager (or HR, for someone without a manager) signs; the agreement is recorded."""
    _check_approver(session, cycle_id, employee_id, actor)
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
        actor=actor,
        action="goals.agreed",
        subject=f"cycle:{cycle_id}/employee:{employee_id}",
        cycle_id=cycle_id,
        before={"state": "submitted"},
        after={"state": "agreed", "goals": len(goals)},
    )


def return_goals(
    session: Session, cycle_id: int, employee_id: str, *, comment: str, actor: str
) -> None:
    _check_approver(session, cycle_id, employee_id, actor)
    if not comment.strip():
        raise InvalidInput([Problem("say why the goals are returned", field="comment")])
    goals = _goals(session, cycle_id, employee_id)
    if any(g.state != "submitted" for g in goals):
        raise InvalidInput([Problem("only submitted goals can be returned", field="state")])
    for g in goals:
        g.state, g.employee_signed_at = "proposed", None
    employee = session.get(Employee, employee_id)
    assert employee is not None
    returned_before = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.action == "goals.returned",
            AuditEvent.subject == f"cycle:{cycle_id}/employee:{employee_id}",
        )
    )
    audit.record(
        session,
        actor=actor,
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
        policy_of(cycle),
        "goals_returned",
        [Recipient.person(Role.employee, employee, link=link)],
        f"goals-returned:{(returned_before or 0) + 1}",
        {"comment": comment},
        due_at=stage.due_at if stage else None,
    )


def _check_approver(session: Session, cycle_id: int, employee_id: str, actor: str) -> None:
    manager = _manager_of(session, cycle_id, employee_id)
    allowed = actor == manager if manager else is_hr(actor)
    if not allowed:
        who = f"their manager {manager}" if manager else "HR"
        raise InvalidInput(
            [Problem(f"only {who} can approve or return {employee_id}'s goals", field="actor")]
        )
