"""Calibration: the committee reviews the distribution and anomalies, adjusts, and approves.

This stage waits for a decision, not for people's tasks: the flow suspends with a run-input
form (Prefect UI) and `apply_decision` records what the committee said.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.core.settings import get_settings
from perfcycle.domain import audit
from perfcycle.domain.calibration_analytics import anomaly_report
from perfcycle.domain.models import (
    CalibrationChange,
    CalibrationDecision,
    Cycle,
    Employee,
    Participant,
    Result,
    StageInstance,
)
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.results import compute_results
from perfcycle.domain.stages.base import Progress, StageContext
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, notify


class GradeAdjustment(BaseModel):
    employee_id: str = Field(description="employee whose grade changes")
    grade: str = Field(description="the calibrated grade")
    reason: str = Field(min_length=1, description="why (kept with the change for auditors)")


class DecisionInput(BaseModel):
    """What the committee submits on the suspended flow run's Resume form."""

    decision: Literal["approve", "send_back"] = Field(
        description="approve the grades, or send evaluation back for the employees named"
    )
    approver: str = Field(min_length=1, description="committee member recording the decision")
    comment: str = Field(default="", description="minutes / reasoning")
    send_back_employees: list[str] = Field(
        default_factory=list, description="employee ids to re-evaluate (send_back only)"
    )
    adjustments: list[GradeAdjustment] = Field(
        default_factory=list, description="grade changes, each with its reason"
    )


class Handler:
    needs_approval = True

    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy, stage = ctx.session, ctx.cycle, ctx.policy, ctx.stage
        written = compute_results(session, cycle, policy)
        report = anomaly_report(session, cycle, policy)
        settings = get_settings()
        # The committee is a mailing list: notify addresses it as the policy says.
        mails = notify(
            session,
            cycle,
            policy,
            "calibration_ready",
            [],
            f"calibration:{stage.attempt}",
            {
                "flow_run_id": cycle.flow_run_id,
                "flow_run_url": f"{settings.prefect_ui_url}/runs/flow-run/{cycle.flow_run_id}",
                "distribution": report.get("distribution", {}),
                "outliers": len(report.get("outliers", [])),
                "flags": sum(len(v) for v in report.get("cross_checks", {}).values()),
            },
            due_at=stage.due_at,
        )
        return {"results_written": written, "mails_enqueued": mails, "anomalies": report}

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle, stage = ctx.session, ctx.cycle, ctx.stage
        decision = session.scalar(
            select(CalibrationDecision.decision).where(
                CalibrationDecision.cycle_id == cycle.id,
                CalibrationDecision.attempt == stage.attempt,
            )
        )
        return Progress(done=1 if decision == "approve" else 0, total=1)

    def close(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy = ctx.session, ctx.cycle, ctx.policy
        now = clock.now()
        session.execute(
            update(Result)
            .where(Result.cycle_id == cycle.id, Result.released_at.is_(None))
            .values(released_at=now)
        )
        people = session.execute(
            select(Result.employee_id, Result.grade, Employee.email, Employee.locale, Employee.name)
            .join(Employee, Employee.id == Result.employee_id)
            .where(Result.cycle_id == cycle.id)
        ).all()
        link = TaskLink("results", f"cycle:{cycle.id}")
        notify(
            session,
            cycle,
            policy,
            "results_released",
            [
                Recipient(Role.employee, p.email, p.locale, p.name, p.employee_id, link=link)
                for p in people
            ],
            "results",
        )
        distribution: dict[str, int] = {g: 0 for g in policy.grade_ids()}
        for p in people:
            distribution[p.grade] = distribution.get(p.grade, 0) + 1
        changes = session.scalar(
            select(CalibrationChange.id).where(CalibrationChange.cycle_id == cycle.id).limit(1)
        )
        return {
            "released": len(people),
            "distribution": distribution,
            "changed": changes is not None,
        }


def apply_decision(
    session: Session, cycle: Cycle, policy: Policy, stage: StageInstance, decision: DecisionInput
) -> bool:
    """Record the committee's decision for the current attempt. False if already recorded."""
    if (
        session.scalar(
            select(CalibrationDecision.id).where(
                CalibrationDecision.cycle_id == cycle.id,
                CalibrationDecision.attempt == stage.attempt,
            )
        )
        is not None
    ):
        return False
    participants = set(
        session.scalars(select(Participant.employee_id).where(Participant.cycle_id == cycle.id))
    )
    problems = _validate(decision, policy, participants)
    if problems:
        raise InvalidInput(problems)
    now = clock.now()
    session.add(
        CalibrationDecision(
            cycle_id=cycle.id,
            attempt=stage.attempt,
            decision=decision.decision,
            comment=decision.comment,
            approver=decision.approver,
            send_back=decision.send_back_employees,
            decided_at=now,
        )
    )
    for adj in decision.adjustments:
        result = session.scalar(
            select(Result).where(Result.cycle_id == cycle.id, Result.employee_id == adj.employee_id)
        )
        if result is None or result.grade == adj.grade:
            continue
        session.add(
            CalibrationChange(
                cycle_id=cycle.id,
                attempt=stage.attempt,
                employee_id=adj.employee_id,
                from_grade=result.grade,
                to_grade=adj.grade,
                reason=adj.reason,
                decided_by=decision.approver,
                decided_at=now,
            )
        )
        audit.record(
            session,
            actor=decision.approver,
            action="grade.calibrated",
            subject=f"cycle:{cycle.id}/employee:{adj.employee_id}",
            cycle_id=cycle.id,
            before={"grade": result.grade},
            after={"grade": adj.grade, "reason": adj.reason},
        )
        result.grade = adj.grade
    audit.record(
        session,
        actor=decision.approver,
        action=f"calibration.{decision.decision}",
        subject=f"cycle:{cycle.id}/stage:calibration",
        cycle_id=cycle.id,
        after=decision.model_dump(),
    )
    if decision.decision == "send_back":
        _send_back(session, cycle, policy, stage, decision)
    return True


def _send_back(
    session: Session, cycle: Cycle, policy: Policy, stage: StageInstance, decision: DecisionInput
) -> None:
    from perfcycle.domain import engine
    from perfcycle.domain.stages.evaluation import reopen_evaluations

    reopen_evaluations(session, cycle.id, decision.send_back_employees, decision.approver)
    engine.reopen_stage(session, cycle, policy, "evaluation", decision.approver)
    stage.attempt += 1
    stage.waits = 0
    stage.escalated = False
    # The committee's new deadline counts from when re-evaluation is due.
    evaluation_due = engine.stage_instances(session, cycle.id)["evaluation"].due_at
    stage.due_at = evaluation_due + timedelta(days=policy.stage("calibration").days)


def _validate(decision: DecisionInput, policy: Policy, participants: set[str]) -> list[Problem]:
    problems = []
    grades = policy.grade_ids()
    for i, adj in enumerate(decision.adjustments):
        if adj.employee_id not in participants:
            problems.append(
                Problem(
                    f"{adj.employee_id} is not in this cycle", field=f"adjustments.{i}.employee_id"
                )
            )
        if not adj.reason.strip():
            problems.append(Problem("say why the grade changes", field=f"adjustments.{i}.reason"))
        if adj.grade not in grades:
            problems.append(
                Problem(
                    f"grade '{adj.grade}' is not one of {', '.join(grades)}",
                    field=f"adjustments.{i}.grade",
                )
            )
    if decision.decision == "send_back":
        if not decision.send_back_employees:
            problems.append(
                Problem("name the employees to re-evaluate", field="send_back_employees")
            )
        if not decision.comment.strip():
            problems.append(Problem("say why evaluation is sent back", field="comment"))
    for i, emp in enumerate(decision.send_back_employees):
        if emp not in participants:
            problems.append(
                Problem(f"{emp} is not in this cycle", field=f"send_back_employees.{i}")
            )
    return problems
