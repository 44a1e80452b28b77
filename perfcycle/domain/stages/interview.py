"""Interview stage: a one-to-one between each participant and their manager.

The manager records results and root causes (the improvement plan is agreed there), the employee
acknowledges. scheduled -> held -> acknowledged; an interview still scheduled at close is missed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import Problem
from perfcycle.domain import access
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import (
    Cycle,
    Employee,
    Interview,
    Participant,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.base import (
    PendingTask,
    Progress,
    RecordKind,
    StageContext,
    state_problems,
)
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, notify, stage_of

STATES = ("scheduled", "held", "acknowledged", "missed")
# A held interview may still be corrected by the manager until the employee acknowledges it.
RECORDABLE = ("scheduled", "held")
INTERVIEW = RecordKind(
    Interview,
    stage=StageName.interview.value,
    states=STATES,
    noun="interview",
    subject="interview",
    id_field="interview_id",
    fields=("state", "summary", "root_causes", "held_at", "acknowledged_at"),
)


class Handler:
    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        created = _create_interviews(session, cycle)
        return INTERVIEW.opened(
            ctx,
            created,
            action="interview.scheduled",
            counted_as="interviews_created",
            event="interview_scheduled",
            recipients=_scheduled_recipients(session, cycle, stage),
            occurrence="interview",
        )

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle = ctx.session, ctx.cycle
        counts = INTERVIEW.count_by_state(session, cycle.id)
        return Progress(done=counts["acknowledged"], total=sum(counts.values()))

    def pending(self, ctx: StageContext) -> dict[str, list[PendingTask]]:
        """Managers with interviews to hold; employees with a record to acknowledge."""
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        emp = aliased(Employee)
        rows = session.execute(
            select(
                Interview.id, Interview.state, Interview.employee_id, Interview.manager_id, emp.name
            )
            .join(emp, emp.id == Interview.employee_id)
            .where(Interview.cycle_id == cycle.id, Interview.state.in_(RECORDABLE))
            .order_by(Interview.employee_id)
        ).all()
        to_hold: dict[str, set[str]] = defaultdict(set)
        todo: dict[str, list[PendingTask]] = defaultdict(list)
        for interview_id, state, employee_id, manager_id, name in rows:
            if state == "held":
                todo[employee_id].append(
                    PendingTask(
                        Role.employee,
                        "acknowledge_interview",
                        "interview_ack",
                        f"interview:{interview_id}",
                    )
                )
            elif manager_id is not None:
                to_hold[manager_id].add(name)
        ref = f"interview:{stage.attempt}"
        for manager_id, names in sorted(to_hold.items()):
            todo[manager_id].append(
                PendingTask(
                    Role.manager, "record_interview", "interviews", ref, tuple(sorted(names))
                )
            )
        return dict(todo)

    def close(self, ctx: StageContext) -> dict[str, Any]:
        return INTERVIEW.close(ctx, unfinished="scheduled", closed_as="missed")


def _create_interviews(session: Session, cycle: Cycle) -> list[str]:
    """Insert the missing interviews; returns the employee ids that got one now."""
    existing = set(
        session.scalars(select(Interview.employee_id).where(Interview.cycle_id == cycle.id))
    )
    rows = [
        {
            "cycle_id": cycle.id,
            "employee_id": employee_id,
            "manager_id": manager_id,
            "state": "scheduled",
            "summary": "",
            "root_causes": "",
        }
        for employee_id, manager_id in session.execute(
            select(Participant.employee_id, Participant.manager_id)
            .where(Participant.cycle_id == cycle.id, Participant.manager_id.is_not(None))
            .order_by(Participant.employee_id)
        )
        if employee_id not in existing
    ]
    insert_ignore(session, Interview.__table__, rows)  # type: ignore[arg-type]
    return [r["employee_id"] for r in rows]


def _scheduled_recipients(session: Session, cycle: Cycle, stage: StageInstance) -> list[Recipient]:
    """One mail per employee, and one per manager listing all of their interviews.

    A manager who is also interviewed gets both, so the two need distinct occurrences.
    """
    occurrence = f"interview:{stage.attempt}"
    emp = aliased(Employee)
    mgr = aliased(Employee)
    rows = session.execute(
        select(Interview.id, emp, mgr)
        .join(emp, emp.id == Interview.employee_id)
        .join(mgr, mgr.id == Interview.manager_id)
        .where(Interview.cycle_id == cycle.id)
        .order_by(Interview.manager_id, Interview.employee_id)
    ).all()
    recipients: list[Recipient] = []
    by_manager: dict[str, list[dict[str, Any]]] = defaultdict(list)
    managers: dict[str, Employee] = {}
    for interview_id, employee, manager in rows:
        recipients.append(
            Recipient.person(
                Role.employee,
                employee,
                context={"interview_id": interview_id, "manager_name": manager.name},
                link=TaskLink("interview", f"interview:{interview_id}"),
            )
        )
        managers[manager.id] = manager
        by_manager[manager.id].append(
            {"interview_id": interview_id, "employee_id": employee.id, "name": employee.name}
        )
    for manager_id, interviews in by_manager.items():
        recipients.append(
            Recipient.person(
                Role.manager,
                managers[manager_id],
                context={"interviews": interviews},
                link=TaskLink("interviews", occurrence),
                occurrence=f"{occurrence}:manager",
            )
        )
    return recipients


# ---------------------------------------------------------------- services


def record_interview(
    session: Session, interview_id: int, *, summary: str, root_causes: str, actor: Actor
) -> Interview:
    """The manager records the one-to-one: what was discussed and the root causes found."""
    interview = INTERVIEW.get(session, interview_id)
    accepting_work(session, interview.cycle_id, StageName.interview)
    problems = access.refusals(access.interview_recorder_refusal(actor, interview))
    problems += state_problems(
        interview.state, RECORDABLE, "the interview is {state}; it can no longer be recorded"
    )
    if not isinstance(summary, str) or not summary.strip():
        problems.append(Problem("a summary of the interview is required", field="summary"))
    if not isinstance(root_causes, str):
        problems.append(Problem("root causes must be text", field="root_causes"))
    access.raise_problems(problems)

    first_time = interview.state == "scheduled"
    INTERVIEW.transition(
        session,
        interview,
        actor=actor.name,
        action="interview.recorded" if first_time else "interview.corrected",
        changes={
            "summary": summary.strip(),
            "root_causes": root_causes.strip(),
            "state": "held",
            **({"held_at": clock.now()} if first_time else {}),
        },
    )
    _notify_recorded(session, interview)
    return interview


def acknowledge_interview(session: Session, interview_id: int, *, actor: Actor) -> Interview:
    """The employee confirms the interview took place as recorded."""
    interview = INTERVIEW.get(session, interview_id)
    accepting_work(session, interview.cycle_id, StageName.interview)
    problems = access.refusals(access.interview_acknowledger_refusal(actor, interview))
    problems += state_problems(
        interview.state,
        ("held",),
        "the interview is {state}; only a held interview can be acknowledged",
    )
    access.raise_problems(problems)
    return INTERVIEW.transition(
        session,
        interview,
        actor=actor.name,
        action="interview.acknowledged",
        changes={"state": "acknowledged", "acknowledged_at": clock.now()},
    )


def _notify_recorded(session: Session, interview: Interview) -> None:
    """Tells the employee the record is there to read and acknowledge."""
    employee = session.get_one(Employee, interview.employee_id)
    cycle = session.get_one(Cycle, interview.cycle_id)
    stage = stage_of(session, cycle.id, StageName.interview)
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        "interview_recorded",
        [
            Recipient.person(
                Role.employee,
                employee,
                link=TaskLink("interview_ack", f"interview:{interview.id}"),
            )
        ],
        f"interview-recorded:{interview.id}",
        {"interview_id": interview.id},
        due_at=stage.due_at if stage else None,
    )
