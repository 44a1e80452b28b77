"""Stage `target_setting`: propose each participant's goals, wait for both signatures, and at
the deadline let the policy's targets apply as proposed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select, update

from perfcycle.core.db import insert_ignore
from perfcycle.domain import audit
from perfcycle.domain.models import Employee, Goal, Participant
from perfcycle.domain.policy.schema import MetricIndicator
from perfcycle.domain.stages.base import PendingTask, Progress, StageContext
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, notify


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
