"""Appeal stage: within a window every participant accepts the results or appeals them.

Appeals go to the supervision committee, whose outcome is upheld, adjusted (a new grade) or
re_evaluated. open -> accepted | filed -> decided; still open when the window closes -> lapsed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access, audit
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import (
    Appeal,
    Cycle,
    Employee,
    Participant,
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
from perfcycle.notifications.notify import Recipient, TaskLink, notify, stage_of

STATES = ("open", "accepted", "filed", "decided", "lapsed")
OUTCOMES = ("upheld", "adjusted", "re_evaluated")
APPEAL = RecordKind(
    Appeal,
    stage=StageName.appeal.value,
    states=STATES,
    noun="appeal",
    subject="appeal",
    id_field="appeal_id",
    fields=("state", "reason", "filed_at", "outcome", "decision_note", "decided_by"),
)


class Handler:
    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        created = _create_appeals(session, cycle)
        return APPEAL.opened(
            ctx,
            created,
            action="appeal.window_opened",
            counted_as="appeals_created",
            noted={"window_closes": stage.due_at.isoformat()},
            event="appeal_window_open",
            recipients=_window_recipients(session, stage),
            occurrence="appeal-window",
            context={"deadline": stage.due_at.isoformat()},
        )

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle = ctx.session, ctx.cycle
        counts = APPEAL.count_by_state(session, cycle.id)
        return Progress(done=counts["accepted"] + counts["decided"], total=sum(counts.values()))

    def pending(self, ctx: StageContext) -> dict[str, list[PendingTask]]:
        """Employees who have neither accepted nor appealed their results."""
        session, cycle = ctx.session, ctx.cycle
        return {
            employee_id: [
                PendingTask(Role.employee, "answer_results", "appeal", f"appeal:{appeal_id}")
            ]
            for appeal_id, employee_id in session.execute(
                select(Appeal.id, Appeal.employee_id)
                .where(Appeal.cycle_id == cycle.id, Appeal.state == "open")
                .order_by(Appeal.employee_id)
            ).tuples()
        }

    def close(self, ctx: StageContext) -> dict[str, Any]:
        """Lapse the silent; filed appeals stay with the committee and are counted as such."""
        return APPEAL.close(ctx, unfinished="open", closed_as="lapsed")


def _create_appeals(session: Session, cycle: Cycle) -> list[str]:
    """Insert the missing appeal rows; returns the employee ids that got one now."""
    existing = set(session.scalars(select(Appeal.employee_id).where(Appeal.cycle_id == cycle.id)))
    new_ids = [
        employee_id
        for employee_id in session.scalars(
            select(Participant.employee_id)
            .where(Participant.cycle_id == cycle.id)
            .order_by(Participant.employee_id)
        )
        if employee_id not in existing
    ]
    rows = [
        {"cycle_id": cycle.id, "employee_id": employee_id, "state": "open", "reason": ""}
        for employee_id in new_ids
    ]
    insert_ignore(session, Appeal.__table__, rows)  # type: ignore[arg-type]
    return new_ids


def _window_recipients(session: Session, stage: StageInstance) -> list[Recipient]:
    """Each participant learns their grade is final unless they appeal by the deadline."""
    rows = session.execute(
        select(Appeal.id, Employee, Result.grade)
        .join(Employee, Employee.id == Appeal.employee_id)
        .outerjoin(
            Result,
            (Result.cycle_id == Appeal.cycle_id) & (Result.employee_id == Appeal.employee_id),
        )
        .where(Appeal.cycle_id == stage.cycle_id)
        .order_by(Appeal.employee_id)
    ).all()
    return [
        Recipient.person(
            Role.employee,
            employee,
            context={"appeal_id": appeal_id, "grade": grade},
            link=TaskLink("appeal", f"appeal:{appeal_id}"),
        )
        for appeal_id, employee, grade in rows
    ]


# ---------------------------------------------------------------- services


def accept_results(session: Session, cycle_id: int, employee_id: str, *, actor: Actor) -> Appeal:
    """The employee says they will not appeal."""
    appeal = _get_appeal_of(session, cycle_id, employee_id)
    accepting_work(session, cycle_id, StageName.appeal)
    problems = access.refusals(access.appellant_refusal(actor, appeal)) + _unanswered(appeal)
    access.raise_problems(problems)
    return APPEAL.transition(
        session,
        appeal,
        actor=actor.name,
        action="appeal.results_accepted",
        changes={"state": "accepted"},
    )


def file_appeal(
    session: Session, cycle_id: int, employee_id: str, *, reason: str, actor: Actor
) -> Appeal:
    """The employee appeals to the supervision committee, within the window."""
    appeal = _get_appeal_of(session, cycle_id, employee_id)
    accepting_work(session, cycle_id, StageName.appeal)
    problems = access.refusals(access.appellant_refusal(actor, appeal)) + _unanswered(appeal)
    if not isinstance(reason, str) or not reason.strip():
        problems.append(Problem("a reason for the appeal is required", field="reason"))
    access.raise_problems(problems)

    APPEAL.transition(
        session,
        appeal,
        actor=actor.name,
        action="appeal.filed",
        changes={"state": "filed", "reason": reason.strip(), "filed_at": clock.now()},
    )
    _notify_received(session, appeal)
    return appeal


def decide_appeal(
    session: Session,
    appeal_id: int,
    *,
    outcome: str,
    note: str,
    actor: Actor,
    policy: Policy,
    new_grade: str | None = None,
) -> Appeal:
    """The supervision committee decides; `adjusted` replaces the employee's grade.

    `policy` is the cycle's policy (its grades are the valid new grades). The decider is a
    member of the supervision committee independent of the case (access.appeal_decider_refusal).
    No deadline applies: an appeal filed in time stays with the committee after the window
    closes (close() lapses only the unanswered).
    """
    appeal = APPEAL.get(session, appeal_id)
    result = session.scalar(
        select(Result).where(
            Result.cycle_id == appeal.cycle_id, Result.employee_id == appeal.employee_id
        )
    )
    problems = access.refusals(access.appeal_decider_refusal(session, actor, appeal))
    problems += _check_decision(appeal, outcome, note, new_grade, policy, result)
    access.raise_problems(problems)

    APPEAL.transition(
        session,
        appeal,
        actor=actor.name,
        action="appeal.decided",
        changes={
            "state": "decided",
            "outcome": outcome,
            "decision_note": note.strip(),
            "decided_by": actor.name,
            "decided_at": clock.now(),
        },
        noted={"new_grade": new_grade},
    )
    if outcome == "adjusted" and result is not None and new_grade is not None:
        _adjust_grade(session, result, new_grade, actor, appeal.id)
    _notify_decided(session, appeal, result)
    return appeal


def _unanswered(appeal: Appeal) -> list[Problem]:
    return state_problems(appeal.state, ("open",), "the results were already answered ({state})")


def _adjust_grade(
    session: Session, result: Result, new_grade: str, actor: Actor, appeal_id: int
) -> None:
    before = {"grade": result.grade}
    result.grade = new_grade
    audit.record(
        session,
        actor=actor.name,
        action="result.grade_adjusted",
        subject=f"result:{result.cycle_id}:{result.employee_id}",
        cycle_id=result.cycle_id,
        before=before,
        after={"grade": new_grade, "appeal_id": appeal_id},
    )


def _get_appeal_of(session: Session, cycle_id: int, employee_id: str) -> Appeal:
    appeal = session.scalar(
        select(Appeal).where(Appeal.cycle_id == cycle_id, Appeal.employee_id == employee_id)
    )
    if appeal is None:
        raise InvalidInput(
            [
                Problem(
                    f"{employee_id!r} has no results to answer in cycle {cycle_id}",
                    field="employee_id",
                )
            ]
        )
    return appeal


def _check_decision(
    appeal: Appeal,
    outcome: str,
    note: str,
    new_grade: str | None,
    policy: Policy,
    result: Result | None,
) -> list[Problem]:
    problems = state_problems(
        appeal.state, ("filed",), "the appeal is {state}; only a filed appeal can be decided"
    )
    if outcome not in OUTCOMES:
        problems.append(
            Problem(f"must be one of {', '.join(OUTCOMES)}, got {outcome!r}", field="outcome")
        )
    if not isinstance(note, str) or not note.strip():
        problems.append(Problem("a note explaining the decision is required", field="note"))
    if outcome != "adjusted":
        if new_grade is not None:
            problems.append(
                Problem("a new grade is given only with outcome adjusted", field="new_grade")
            )
        return problems
    grades = policy.grade_ids()
    if new_grade is None:
        problems.append(Problem("outcome adjusted needs the new grade", field="new_grade"))
    elif new_grade not in grades:
        problems.append(
            Problem(
                f"{new_grade!r} is not a grade of policy {policy.id} ({', '.join(grades)})",
                field="new_grade",
            )
        )
    elif result is None:
        problems.append(Problem("the employee has no result to adjust", field="new_grade"))
    elif result.grade == new_grade:
        problems.append(
            Problem(f"the grade already is {new_grade}; use outcome upheld", field="new_grade")
        )
    return problems


def _notify_received(session: Session, appeal: Appeal) -> None:
    """The employee gets a receipt; the supervision committee gets a case to decide."""
    employee = session.get_one(Employee, appeal.employee_id)
    cycle = session.get_one(Cycle, appeal.cycle_id)
    stage = stage_of(session, cycle.id, StageName.appeal)
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        "appeal_received",
        [Recipient.person(Role.employee, employee)],
        f"appeal-received:{appeal.id}",
        _mail_context(appeal, employee),
        # The committee decides before the appeal stage closes (then undecided appeals lapse).
        due_at=stage.due_at if stage else None,
    )


def _notify_decided(session: Session, appeal: Appeal, result: Result | None) -> None:
    """The employee learns the decision; their manager too when the grade changed."""
    employee = session.get_one(Employee, appeal.employee_id)
    cycle = session.get_one(Cycle, appeal.cycle_id)
    recipients = [Recipient.person(Role.employee, employee)]
    manager = session.get(Employee, employee.manager_id) if employee.manager_id else None
    if appeal.outcome == "adjusted" and manager is not None:
        recipients.append(Recipient.person(Role.manager, manager))
    notify(
        session,
        cycle,
        cycle_policy_or_none(cycle),
        "appeal_decided",
        recipients,
        f"appeal-decided:{appeal.id}",
        {**_mail_context(appeal, employee), "grade": result.grade if result else None},
    )


def _mail_context(appeal: Appeal, employee: Employee) -> dict[str, Any]:
    """What every mail about the appeal says; `name` is each recipient's own."""
    return {
        "appeal_id": appeal.id,
        "employee_id": employee.id,
        "employee_name": employee.name,
        "reason": appeal.reason,
        "outcome": appeal.outcome,
        "decision_note": appeal.decision_note,
    }
