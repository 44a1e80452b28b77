"""The database: the source of truth for every cycle. Prefect drives it, it never holds state.

Natural keys carry unique constraints so that every stage can be re-run and converge.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from perfcycle.core.db import UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class DepartmentType(StrEnum):
    internal_service = "internal_service"
    external_service = "external_service"
    professional_support = "professional_support"


class StageName(StrEnum):
    target_setting = "target_setting"
    data_collection = "data_collection"
    evaluation = "evaluation"
    calibration = "calibration"
    interview = "interview"
    improvement = "improvement"
    appeal = "appeal"


class RaterType(StrEnum):
    service_recipient = "service_recipient"
    superior = "superior"
    peer = "peer"
    self_ = "self"
    third_party = "third_party"


# ---------------------------------------------------------------- organisation


class Department(Base):
    __tablename__ = "departments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32))
    __table_args__ = (
        CheckConstraint(
            "type IN ('internal_service','external_service','professional_support')",
            name="type",
        ),
    )


class Employee(Base):
    __tablename__ = "employees"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    department_id: Mapped[str] = mapped_column(ForeignKey("departments.id"), index=True)
    manager_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"), index=True)
    locale: Mapped[str] = mapped_column(String(10), default="zh-CN")
    active: Mapped[bool] = mapped_column(default=True)


# ---------------------------------------------------------------- cycles and stages


class Cycle(Base):
    __tablename__ = "cycles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy: Mapped[str] = mapped_column(String(100))
    policy_digest: Mapped[str] = mapped_column(String(64))
    # The policy as launched: a cycle keeps its rules even if the file is edited mid-cycle.
    policy_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The shape the snapshot was written in (perfcycle/domain/policy/snapshot.py reads every one):
    # rows from before versioning are 1; new rows today's SNAPSHOT_VERSION, which a test compares.
    snapshot_version: Mapped[int] = mapped_column(default=2, server_default="1")
    period: Mapped[str] = mapped_column(String(20))
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    # Sorted, comma-joined department ids; "" means the whole organisation. Part of the natural key.
    scope_key: Mapped[str] = mapped_column(String(2000), default="")
    start_date: Mapped[date] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(20), default="running")
    current_stage: Mapped[str | None] = mapped_column(String(40))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("policy", "period", "scope_key"),
        CheckConstraint("state IN ('running','completed','failed')", name="state"),
    )


class StageInstance(Base):
    __tablename__ = "stage_instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"), index=True)
    name: Mapped[str] = mapped_column(String(40))
    position: Mapped[int]
    state: Mapped[str] = mapped_column(String(20), default="open")
    # Bumped when calibration sends a stage back; suspend keys and outbox keys include it.
    attempt: Mapped[int] = mapped_column(default=1)
    # Bumped on every suspend, so a run resumed before the stage is done can suspend again.
    waits: Mapped[int] = mapped_column(default=0)
    extensions: Mapped[int] = mapped_column(default=0)
    escalated: Mapped[bool] = mapped_column(default=False)
    opened_at: Mapped[datetime]
    due_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    close_reason: Mapped[str | None] = mapped_column(String(40))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    __table_args__ = (
        UniqueConstraint("cycle_id", "name"),
        CheckConstraint("state IN ('open','completed')", name="state"),
    )


class Participant(Base):
    __tablename__ = "participants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"), index=True)
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    department_id: Mapped[str] = mapped_column(ForeignKey("departments.id"))
    manager_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"))
    __table_args__ = (UniqueConstraint("cycle_id", "employee_id"),)


# ---------------------------------------------------------------- target setting


class Goal(Base):
    """One indicator (from the policy) or personal goal of one participant in one cycle."""

    __tablename__ = "goals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    # The policy's indicator id, or personal-1, personal-2, ... for the employee's own goals.
    indicator_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20), default="indicator", server_default="indicator")
    category: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(500))
    # Personal goals: how attainment is measured, and by when (SMART's measurable, time-bound).
    measure: Mapped[str | None] = mapped_column(String(500))
    deadline: Mapped[date | None] = mapped_column(Date)
    target: Mapped[float | None] = mapped_column(Float)
    # Percent of the employee's total score; one employee's goals add up to 100.
    weight: Mapped[float] = mapped_column(Float)
    locked: Mapped[bool] = mapped_column(default=True)
    # proposed -> submitted (employee) -> agreed (manager); returned sends it back to proposed.
    state: Mapped[str] = mapped_column(String(20), default="proposed")
    employee_signed_at: Mapped[datetime | None]
    manager_signed_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("cycle_id", "employee_id", "indicator_id"),
        CheckConstraint("state IN ('proposed','submitted','agreed')", name="state"),
        CheckConstraint("kind IN ('indicator','personal')", name="kind"),
        CheckConstraint(
            "kind = 'indicator' OR (measure IS NOT NULL AND deadline IS NOT NULL "
            "AND target IS NOT NULL)",
            name="personal_is_smart",
        ),
        Index("ix_goals_cycle_state", "cycle_id", "state"),
    )


# ---------------------------------------------------------------- data collection


class MetricValue(Base):
    __tablename__ = "metric_values"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(100))
    # What the number rests on: the source, the query window, ticket ids or counts.
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    collected_at: Mapped[datetime]
    __table_args__ = (UniqueConstraint("cycle_id", "employee_id", "metric"),)


# ---------------------------------------------------------------- evaluation


class RaterAssignment(Base):
    __tablename__ = "rater_assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    rater_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    ratee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    rater_type: Mapped[str] = mapped_column(String(30))
    # pending -> submitted; expired when the stage closes without it.
    state: Mapped[str] = mapped_column(String(20), default="pending")
    round: Mapped[int] = mapped_column(default=1)
    submitted_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("cycle_id", "rater_id", "ratee_id", "rater_type"),
        CheckConstraint("state IN ('pending','submitted','expired')", name="state"),
        CheckConstraint(
            "rater_type IN ('service_recipient','superior','peer','self','third_party')",
            name="rater_type",
        ),
        Index("ix_rater_assignments_cycle_state", "cycle_id", "state"),
        Index("ix_rater_assignments_rater", "cycle_id", "rater_id"),
        Index("ix_rater_assignments_ratee", "cycle_id", "ratee_id"),
    )


class Evaluation(Base):
    """One rater's score on one item for one ratee."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("rater_assignments.id"), index=True)
    item: Mapped[str] = mapped_column(String(100))
    score: Mapped[int]
    comment: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (
        UniqueConstraint("assignment_id", "item"),
        CheckConstraint("score BETWEEN 1 AND 5", name="score_range"),
    )


class EvaluationDraft(Base):
    """A rater's unfinished form: partial answers kept until they submit (then deleted)."""

    __tablename__ = "evaluation_drafts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("rater_assignments.id"), unique=True)
    # {item: {"score": 1..5 or null, "comment": str}}
    answers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    saved_at: Mapped[datetime]


# ---------------------------------------------------------------- scoring and calibration


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    indicators: Mapped[dict[str, Any]] = mapped_column(default=dict)
    categories: Mapped[dict[str, Any]] = mapped_column(default=dict)
    total: Mapped[float] = mapped_column(Float)
    computed_grade: Mapped[str] = mapped_column(String(20))
    # The grade after calibration; equals computed_grade unless the committee changed it.
    grade: Mapped[str] = mapped_column(String(20))
    veto_triggered: Mapped[bool] = mapped_column(default=False)
    flags: Mapped[list[Any]] = mapped_column(default=list)
    released_at: Mapped[datetime | None]
    __table_args__ = (UniqueConstraint("cycle_id", "employee_id"),)


class CalibrationDecision(Base):
    __tablename__ = "calibration_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    attempt: Mapped[int]
    decision: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text, default="")
    approver: Mapped[str] = mapped_column(String(200))
    send_back: Mapped[list[Any]] = mapped_column(default=list)
    decided_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("cycle_id", "attempt"),
        CheckConstraint("decision IN ('approve','send_back')", name="decision"),
    )


class CalibrationChange(Base):
    __tablename__ = "calibration_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    attempt: Mapped[int]
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    from_grade: Mapped[str] = mapped_column(String(20))
    to_grade: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("cycle_id", "attempt", "employee_id"),
        CheckConstraint("length(reason) > 0", name="reason_required"),
    )


# ---------------------------------------------------------------- interview and improvement


class Interview(Base):
    __tablename__ = "interviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    manager_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"))
    # scheduled -> held (manager recorded it) -> acknowledged (employee); missed if it never was.
    state: Mapped[str] = mapped_column(String(20), default="scheduled")
    held_at: Mapped[datetime | None]
    summary: Mapped[str] = mapped_column(Text, default="")
    root_causes: Mapped[str] = mapped_column(Text, default="")
    acknowledged_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("cycle_id", "employee_id"),
        CheckConstraint("state IN ('scheduled','held','acknowledged','missed')", name="state"),
    )


class ImprovementPlan(Base):
    __tablename__ = "improvement_plans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"))
    goal: Mapped[str] = mapped_column(Text)
    actions: Mapped[list[Any]] = mapped_column(default=list)
    deadline: Mapped[date] = mapped_column(Date)
    # open -> closed (effect verified or not); lapsed when the stage closes with it still open.
    state: Mapped[str] = mapped_column(String(20), default="open")
    effect_verified: Mapped[bool | None]
    outcome: Mapped[str] = mapped_column(Text, default="")
    closed_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("cycle_id", "employee_id"),
        CheckConstraint("state IN ('open','closed','lapsed')", name="state"),
    )


class PlanCheckin(Base):
    __tablename__ = "plan_checkins"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("improvement_plans.id"), index=True)
    month: Mapped[str] = mapped_column(String(7))
    progress: Mapped[int] = mapped_column(default=0)
    note: Mapped[str] = mapped_column(Text, default="")
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("plan_id", "month"),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
    )


# ---------------------------------------------------------------- appeal


class Appeal(Base):
    """An employee's response to released results: accepted, or an appeal to be decided."""

    __tablename__ = "appeals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"))
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    # open (window running, nothing said) -> accepted | filed -> decided; lapsed at window close.
    state: Mapped[str] = mapped_column(String(20), default="open")
    reason: Mapped[str] = mapped_column(Text, default="")
    filed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(20))
    decision_note: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("cycle_id", "employee_id"),
        CheckConstraint("state IN ('open','accepted','filed','decided','lapsed')", name="state"),
        CheckConstraint(
            "outcome IS NULL OR outcome IN ('upheld','adjusted','re_evaluated')", name="outcome"
        ),
    )


# ---------------------------------------------------------------- outbox and audit


class OutboxMessage(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # cycle:recipient:template:occurrence - the constraint that makes "never twice" true.
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"), index=True)
    recipient_id: Mapped[str | None] = mapped_column(String(64))
    recipient_email: Mapped[str] = mapped_column(String(320))
    locale: Mapped[str] = mapped_column(String(10))
    template: Mapped[str] = mapped_column(String(100))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    __table_args__ = (
        CheckConstraint("state IN ('pending','sending','sent','failed')", name="state"),
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
    )


class AuditEvent(Base):
    """Append-only, hash-chained. prev_hash is unique: two writers can never fork the chain."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(300))
    cycle_id: Mapped[int | None] = mapped_column(Integer, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


# ---------------------------------------------------------------- portal links


class TaskToken(Base):
    """The token of one emailed portal link, bound to one person's task.

    Only its sha256 is stored: whoever reads the database cannot use a link. Expired tokens are
    unknown to the portal; a used one is still found (used_at set) so it can say so.
    """

    __tablename__ = "task_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("employees.id"), index=True)
    # What the link opens: 'evaluation', 'goals', 'interview', ... (portal routes on it).
    task_kind: Mapped[str] = mapped_column(String(40))
    # None for sign-in links, which open no task of a cycle.
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"), index=True)
    # Which instance of the task: 'evaluation:1' (stage attempt), 'interview:17', 'plan:4'.
    task_ref: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class PortalSessionGeneration(Base):
    """How many times a person signed out. A session cookie carries the number it was issued
    under; signing out increments it, so every session issued before (a copied cookie, another
    device) stops working at once instead of living on until it expires."""

    __tablename__ = "portal_session_generations"
    person_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(default=0)
    signed_out_at: Mapped[datetime]


class PortalRole(Base):
    """A portal role beyond the org chart (hr_admin, committee, supervision, auditor).

    `principal` is an employee id or a lower-case email address: HR can grant a role to someone
    by address before (or without) their joining the org chart.
    """

    __tablename__ = "portal_roles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    granted_by: Mapped[str] = mapped_column(String(200))
    granted_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("principal", "role"),
        CheckConstraint("role IN ('hr_admin','committee','supervision','auditor')", name="role"),
    )
