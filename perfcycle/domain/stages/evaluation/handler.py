"""Stage `evaluation`: assign raters, wait for their forms, expire what is left."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from perfcycle.core.db import insert_ignore
from perfcycle.domain import audit
from perfcycle.domain.models import Employee, Participant, RaterAssignment, StageInstance, StageName
from perfcycle.domain.stages.base import PendingTask, Progress, StageContext
from perfcycle.domain.stages.evaluation.raters import (
    Organisation,
    Ratee,
    draw_raters,
    load_organisation,
)
from perfcycle.domain.stages.evaluation.states import EXPIRED, PENDING, SUBMITTED, table
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, notify


def _assignment_row(cycle_id: int, rater_id: str, ratee_id: str, rater_type: str) -> dict[str, Any]:
    return {
        "cycle_id": cycle_id,
        "rater_id": rater_id,
        "ratee_id": ratee_id,
        "rater_type": rater_type,
        "state": PENDING,
        "round": 1,
        "submitted_at": None,
    }


def _assignment_recipients(
    stage: StageInstance,
    org: Organisation,
    pending: Sequence[tuple[str, str, str]],
) -> list[Recipient]:
    """One mail per rater listing everyone they have still to rate."""
    by_rater: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rater_id, ratee_id, rater_type in pending:
        by_rater[rater_id].append((ratee_id, rater_type))
    link = TaskLink("evaluation", f"evaluation:{stage.attempt}")
    recipients = []
    for rater_id, ratees in sorted(by_rater.items()):
        rater = org.people[rater_id]
        if not rater.active:
            continue
        listed = [
            {"employee_id": r, "name": org.people[r].name, "rater_type": t}
            for r, t in sorted(ratees)
        ]
        recipients.append(
            Recipient.person(
                Role.rater, rater, context={"ratees": listed, "count": len(listed)}, link=link
            )
        )
    return recipients


class Handler:
    """Stage `evaluation`: assign raters, wait for their forms, expire what is left."""

    name = StageName.evaluation

    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy, stage = ctx.session, ctx.cycle, ctx.policy, ctx.stage
        org = load_organisation(session)
        rules = {t: rule.count for t, rule in policy.raters.items()}
        participants = [
            Ratee(*row)
            for row in session.execute(
                select(Participant.employee_id, Participant.department_id, Participant.manager_id)
                .where(Participant.cycle_id == cycle.id)
                .order_by(Participant.employee_id)
            )
        ]
        existing = {
            (rater_id, ratee_id, rater_type): state
            for rater_id, ratee_id, rater_type, state in session.execute(
                select(
                    RaterAssignment.rater_id,
                    RaterAssignment.ratee_id,
                    RaterAssignment.rater_type,
                    RaterAssignment.state,
                ).where(RaterAssignment.cycle_id == cycle.id)
            )
        }
        # A ratee's raters are fixed once drawn: an org change between re-runs must not add
        # raters (and so weight) to someone already being rated.
        assigned = {ratee_id for _, ratee_id, _ in existing}
        new_keys = [
            (rater_id, p.employee_id, rater_type)
            for p in participants
            if p.employee_id not in assigned
            for rater_id, rater_type in draw_raters(org, cycle.id, p, rules)
        ]
        created = insert_ignore(
            session,
            table(RaterAssignment),
            [_assignment_row(cycle.id, *key) for key in new_keys],
        )
        pending = [k for k, state in existing.items() if state == PENDING] + new_keys
        mailed = notify(
            session,
            cycle,
            policy,
            "evaluation_assigned",
            _assignment_recipients(stage, org, pending),
            f"evaluation:{stage.attempt}",
            {"stage": StageName.evaluation.value},
            due_at=stage.due_at,
        )
        if created or mailed:
            audit.record(
                session,
                actor=audit.SYSTEM,
                action="evaluation.assigned",
                subject=f"cycle:{cycle.id}",
                cycle_id=cycle.id,
                after={
                    "assignments": created,
                    "raters": len({k[0] for k in new_keys}),
                    "mails": mailed,
                    "attempt": stage.attempt,
                },
            )
        return {"assignments_created": created, "mails_enqueued": mailed}

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle = ctx.session, ctx.cycle
        counts = _state_counts(session, cycle.id)
        return Progress(
            done=counts.get(SUBMITTED, 0),
            total=counts.get(SUBMITTED, 0) + counts.get(PENDING, 0),
        )

    def pending(self, ctx: StageContext) -> dict[str, list[PendingTask]]:
        """Each rater with forms still to fill, naming their ratees."""
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        ratees: dict[str, set[str]] = defaultdict(set)
        for rater_id, name in session.execute(
            select(RaterAssignment.rater_id, Employee.name)
            .join(Employee, Employee.id == RaterAssignment.ratee_id)
            .where(RaterAssignment.cycle_id == cycle.id, RaterAssignment.state == PENDING)
        ).tuples():
            ratees[rater_id].add(name)
        ref = f"evaluation:{stage.attempt}"
        return {
            rater_id: [PendingTask(Role.rater, "evaluate", "evaluation", ref, tuple(sorted(names)))]
            for rater_id, names in sorted(ratees.items())
        }

    def close(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle = ctx.session, ctx.cycle
        result = session.execute(
            update(RaterAssignment)
            .where(RaterAssignment.cycle_id == cycle.id, RaterAssignment.state == PENDING)
            .values(state=EXPIRED)
            .execution_options(synchronize_session=False)
        )
        expired = max(getattr(result, "rowcount", 0) or 0, 0)
        submitted = _state_counts(session, cycle.id).get(SUBMITTED, 0)
        if expired:
            audit.record(
                session,
                actor=audit.SYSTEM,
                action="evaluation.closed",
                subject=f"cycle:{cycle.id}",
                cycle_id=cycle.id,
                after={"submitted": submitted, "expired": expired},
            )
        return {"submitted": submitted, "expired": expired}


def _state_counts(session: Session, cycle_id: int) -> dict[str, int]:
    rows = session.execute(
        select(RaterAssignment.state, func.count())
        .where(RaterAssignment.cycle_id == cycle_id)
        .group_by(RaterAssignment.state)
    )
    return {state: count for state, count in rows.tuples()}
