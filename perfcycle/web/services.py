"""Read models of the portal pages: queries only. Every write goes through the domain services.

Privacy rules live here, not in templates: a rater's view holds only their own answers, and a
ratee's view holds rater groups only as aggregates over at least the policy's anonymity threshold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from perfcycle.connectors.sources import MORE_SUFFIX
from perfcycle.domain import access, audit, engine
from perfcycle.domain.models import (
    Appeal,
    AuditEvent,
    Cycle,
    Department,
    Employee,
    Evaluation,
    Goal,
    ImprovementPlan,
    Interview,
    MetricValue,
    Participant,
    RaterAssignment,
    RaterType,
    Result,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.schema import (
    MetricIndicator,
    Policy,
    RatedIndicator,
    Text,
    VetoIndicator,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.notifications.reminders import describe, open_people_stages
from perfcycle.web import i18n

AUDIT_PAGE_SIZE = 50


# ---------------------------------------------------------------- cycles and people


def cycle_or_none(session: Session, cycle_id: int) -> Cycle | None:
    return session.get(Cycle, cycle_id)


def is_participant(session: Session, cycle_id: int, employee_id: str) -> bool:
    found = session.scalar(
        select(Participant.id).where(
            Participant.cycle_id == cycle_id, Participant.employee_id == employee_id
        )
    )
    return found is not None


def stage_instance(session: Session, cycle_id: int, name: str) -> StageInstance | None:
    return session.scalar(
        select(StageInstance).where(StageInstance.cycle_id == cycle_id, StageInstance.name == name)
    )


def names_of(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = session.execute(select(Employee.id, Employee.name).where(Employee.id.in_(sorted(ids))))
    return {i: n for i, n in rows.tuples()}


# ---------------------------------------------------------------- goals


@dataclass(frozen=True)
class GoalRow:
    id: int
    indicator_id: str
    kind: str
    category: str
    title: str
    measure: str | None
    deadline: date | None
    target: float | None
    weight: float
    locked: bool
    state: str
    employee_signed_at: datetime | None
    manager_signed_at: datetime | None

    @property
    def personal(self) -> bool:
        return self.kind == "personal"


@dataclass(frozen=True)
class GoalSheet:
    """One employee's goals in one cycle: what both sides sign."""

    employee_id: str
    name: str
    goals: list[GoalRow]

    @property
    def state(self) -> str:
        """The sheet's state: the least advanced of its goals."""
        states = {g.state for g in self.goals}
        for state in ("proposed", "submitted", "agreed"):
            if state in states:
                return state
        return "none"

    @property
    def total_weight(self) -> float:
        return sum(g.weight for g in self.goals)

    @property
    def personal(self) -> list[GoalRow]:
        return [g for g in self.goals if g.personal]

    @property
    def employee_signed_at(self) -> datetime | None:
        return _latest(g.employee_signed_at for g in self.goals)

    @property
    def manager_signed_at(self) -> datetime | None:
        return _latest(g.manager_signed_at for g in self.goals)


def _latest(moments: Any) -> datetime | None:
    present = [m for m in moments if m is not None]
    return max(present) if present else None


def _goal_row(g: Goal) -> GoalRow:
    return GoalRow(
        g.id,
        g.indicator_id,
        g.kind,
        g.category,
        g.title,
        g.measure,
        g.deadline,
        g.target,
        g.weight,
        g.locked,
        g.state,
        g.employee_signed_at,
        g.manager_signed_at,
    )


def goal_sheet(session: Session, cycle_id: int, employee_id: str) -> GoalSheet:
    goals = session.scalars(
        select(Goal)
        .where(Goal.cycle_id == cycle_id, Goal.employee_id == employee_id)
        .order_by(Goal.id)
    )
    name = names_of(session, {employee_id}).get(employee_id, employee_id)
    return GoalSheet(employee_id, name, [_goal_row(g) for g in goals])


def sheets_to_review(
    session: Session, cycle_id: int, actor: access.Actor
) -> list[tuple[GoalSheet, bool]]:
    """The goal sheets the actor approves or returns in the cycle, each with True where they
    review it as HR standing in for a missing manager (access.goal_reviewees says whose)."""
    return [
        (goal_sheet(session, cycle_id, r.employee_id), r.as_hr)
        for r in access.goal_reviewees(session, actor, cycle_id)
    ]


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class AssignmentRow:
    id: int
    cycle_id: int
    rater_id: str
    ratee_id: str
    ratee_name: str
    rater_type: str
    state: str
    submitted_at: datetime | None


def rater_assignments(session: Session, cycle_id: int, rater_id: str) -> list[AssignmentRow]:
    rows = session.execute(
        select(RaterAssignment, Employee.name)
        .join(Employee, Employee.id == RaterAssignment.ratee_id)
        .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.rater_id == rater_id)
        .order_by(Employee.name, RaterAssignment.id)
    ).tuples()
    return [_assignment_row(a, name) for a, name in rows]


def assignment(session: Session, assignment_id: int) -> AssignmentRow | None:
    row = session.execute(
        select(RaterAssignment, Employee.name)
        .join(Employee, Employee.id == RaterAssignment.ratee_id)
        .where(RaterAssignment.id == assignment_id)
    ).first()
    return _assignment_row(*row.tuple()) if row is not None else None


def _assignment_row(a: RaterAssignment, ratee_name: str) -> AssignmentRow:
    return AssignmentRow(
        a.id, a.cycle_id, a.rater_id, a.ratee_id, ratee_name, a.rater_type, a.state, a.submitted_at
    )


def own_answers(session: Session, assignment_id: int) -> dict[str, tuple[int, str]]:
    """The answers of one assignment: only ever shown to that assignment's rater."""
    rows = session.execute(
        select(Evaluation.item, Evaluation.score, Evaluation.comment).where(
            Evaluation.assignment_id == assignment_id
        )
    ).tuples()
    return {item: (score, comment) for item, score, comment in rows}


# ---------------------------------------------------------------- transparency


# Evidence keys a metric row puts into words of its own (source, period, rule, what it replaced)
# instead of listing them among its facts; `from`/`until` are the period as the query saw it.
EVIDENCE_FRAME = frozenset(
    {"source", "period_start", "period_end", "from", "until", "query", "rule", "overrides"}
)
# Catalog keys of the words for an evidence key and for a source id, when the portal has them.
EVIDENCE_LABEL = "evidence.{}"
SOURCE_LABEL = "source.{}"
# Counts a reader looks for first; every other fact follows in key order, numbers before text.
_LEADING_FACTS = ("tickets", "surveys")


@dataclass(frozen=True)
class EvidenceFact:
    """One count or detail of a value's evidence, e.g. tickets = 29."""

    key: str
    value: Any
    # Catalog key of its label; None when the portal has no words for the key (show the key).
    label: str | None = None


@dataclass(frozen=True)
class EvidenceList:
    """The records a value's evidence names, e.g. the complaint tickets: the ids the connector
    kept (perfcycle.connectors.sources.EVIDENCE_LIST_MAX at most) and how many more there were."""

    key: str
    ids: list[Any]
    more: int = 0
    label: str | None = None


@dataclass(frozen=True)
class MetricRow:
    metric: str
    value: float
    source: str
    evidence: dict[str, Any]
    # The policy indicator that scores the metric, for its name; None: name it by the metric id.
    indicator: Text | None = None
    facts: list[EvidenceFact] = field(default_factory=list)
    lists: list[EvidenceList] = field(default_factory=list)
    # Catalog key of the source's name in words; None: show the source id alone.
    source_label: str | None = None

    def name(self, locale: str) -> str:
        return self.indicator.get(locale) if self.indicator is not None else self.metric

    @property
    def period(self) -> tuple[str, str] | None:
        """First and last day (both inclusive) the value covers, as ISO dates."""
        start, end = self.evidence.get("period_start"), self.evidence.get("period_end")
        return (str(start), str(end)) if start and end else None

    @property
    def rule(self) -> str | None:
        rule = self.evidence.get("rule")
        return str(rule) if rule not in (None, "") else None

    @property
    def query(self) -> int | None:
        query = self.evidence.get("query")
        return query if isinstance(query, int) and not isinstance(query, bool) else None

    @property
    def overrides(self) -> dict[str, Any] | None:
        """The source and value this one replaced (a later source or HR's import wins)."""
        replaced = self.evidence.get("overrides")
        return dict(replaced) if isinstance(replaced, dict) else None


def _label(template: str, key: str, known: Collection[str]) -> str | None:
    wanted = template.format(key)
    return wanted if wanted in known else None


def evidence_parts(
    evidence: dict[str, Any], known: Collection[str]
) -> tuple[list[EvidenceFact], list[EvidenceList]]:
    """A value's evidence as facts (counts, first and last ids, ...) and lists of records.

    `known` holds the catalog keys there are words for (i18n.keys()). A list's `<key>_more`
    becomes the list's `more`; the keys in EVIDENCE_FRAME are shown elsewhere on the row.
    """
    list_keys = [k for k, v in evidence.items() if isinstance(v, list)]
    lists = []
    for key in sorted(list_keys):
        more = evidence.get(key + MORE_SUFFIX, 0)
        count = more if isinstance(more, int) and not isinstance(more, bool) and more > 0 else 0
        lists.append(
            EvidenceList(key, list(evidence[key]), count, _label(EVIDENCE_LABEL, key, known))
        )
    hidden = EVIDENCE_FRAME | set(list_keys) | {k + MORE_SUFFIX for k in list_keys}
    facts = [
        EvidenceFact(key, value, _label(EVIDENCE_LABEL, key, known))
        for key, value in evidence.items()
        if key not in hidden
    ]

    def order(fact: EvidenceFact) -> tuple[bool, int, str]:
        number = isinstance(fact.value, int | float) and not isinstance(fact.value, bool)
        leading = _LEADING_FACTS.index(fact.key) if fact.key in _LEADING_FACTS else 99
        return not number, leading, fact.key

    return sorted(facts, key=order), lists


def metric_indicators(policy: Policy) -> dict[str, Text]:
    """metric id -> name of the policy indicator that scores it (the first, in policy order)."""
    names: dict[str, Text] = {}
    for ind in policy.indicators:
        if isinstance(ind, MetricIndicator):
            names.setdefault(ind.metric, ind.name)
        elif isinstance(ind, VetoIndicator):
            names.setdefault(ind.trigger.metric, ind.name)
    return names


@dataclass(frozen=True)
class RaterGroup:
    """One rater type's answers about one ratee, aggregated; None scores when too few answered."""

    rater_type: str
    answered: int
    shown: bool
    # item -> mean score 1..5 over the group's raters; empty unless shown.
    item_means: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultView:
    indicators: dict[str, Any]
    categories: dict[str, Any]
    total: float
    grade: str
    released_at: datetime


@dataclass(frozen=True)
class Transparency:
    cycle_id: int
    employee_id: str
    goals: GoalSheet
    metrics: list[MetricRow]
    result: ResultView | None
    rater_groups: list[RaterGroup]
    threshold: int


def metric_rows(
    session: Session, cycle_id: int, employee_id: str, policy: Policy | None = None
) -> list[MetricRow]:
    """The employee's metric values with their evidence taken apart for the page; with the
    cycle's `policy`, each row also knows the indicator that scores it."""
    rows = session.scalars(
        select(MetricValue)
        .where(MetricValue.cycle_id == cycle_id, MetricValue.employee_id == employee_id)
        .order_by(MetricValue.metric)
    )
    indicators = metric_indicators(policy) if policy is not None else {}
    known = i18n.keys()
    out = []
    for m in rows:
        evidence = dict(m.evidence or {})
        facts, lists = evidence_parts(evidence, known)
        out.append(
            MetricRow(
                m.metric,
                m.value,
                m.source,
                evidence,
                indicators.get(m.metric),
                facts,
                lists,
                _label(SOURCE_LABEL, m.source, known),
            )
        )
    return out


def released_result(session: Session, cycle_id: int, employee_id: str) -> ResultView | None:
    """The employee's scores and grade, only once released (calibration may still change them)."""
    r = session.scalar(
        select(Result).where(Result.cycle_id == cycle_id, Result.employee_id == employee_id)
    )
    if r is None or r.released_at is None:
        return None
    return ResultView(dict(r.indicators), dict(r.categories), r.total, r.grade, r.released_at)


def rater_groups(
    session: Session, cycle_id: int, ratee_id: str, threshold: int
) -> list[RaterGroup]:
    """Submitted answers per rater type; scores only where at least `threshold` raters answered.

    Counting and averaging happen in SQL, so no individual answer ever reaches the page.
    """
    ra, ev = RaterAssignment, Evaluation
    answered = dict(
        session.execute(
            select(ra.rater_type, func.count(ra.id))
            .where(ra.cycle_id == cycle_id, ra.ratee_id == ratee_id, ra.state == "submitted")
            .group_by(ra.rater_type)
        )
        .tuples()
        .all()
    )
    means: dict[str, dict[str, float]] = defaultdict(dict)
    shown_types = [t for t, n in answered.items() if _shown(t, n, threshold)]
    if shown_types:
        rows = session.execute(
            select(ra.rater_type, ev.item, func.avg(ev.score))
            .join(ev, ev.assignment_id == ra.id)
            .where(
                ra.cycle_id == cycle_id,
                ra.ratee_id == ratee_id,
                ra.state == "submitted",
                ra.rater_type.in_(shown_types),
            )
            .group_by(ra.rater_type, ev.item)
        ).tuples()
        for rater_type, item, mean in rows:
            means[rater_type][item] = float(mean)
    return [
        RaterGroup(t, n, _shown(t, n, threshold), dict(sorted(means[t].items())))
        for t, n in sorted(answered.items())
    ]


def _shown(rater_type: str, answered: int, threshold: int) -> bool:
    # The self-assessment is the ratee's own answer: there is nobody in it to protect.
    return answered >= threshold or rater_type == RaterType.self_.value


def transparency(session: Session, cycle: Cycle, employee_id: str) -> Transparency:
    policy = cycle_policy(cycle)
    result = released_result(session, cycle.id, employee_id)
    groups = (
        rater_groups(session, cycle.id, employee_id, policy.anonymity_threshold)
        if result is not None
        else []
    )
    return Transparency(
        cycle.id,
        employee_id,
        goal_sheet(session, cycle.id, employee_id),
        metric_rows(session, cycle.id, employee_id, policy),
        result,
        groups,
        policy.anonymity_threshold,
    )


def cycles_of(session: Session, employee_id: str) -> list[Cycle]:
    """The cycles the person takes part in, newest first."""
    return list(
        session.scalars(
            select(Cycle)
            .join(Participant, Participant.cycle_id == Cycle.id)
            .where(Participant.employee_id == employee_id)
            .order_by(Cycle.id.desc())
        )
    )


def rated_item_names(policy: Policy, locale: str) -> dict[str, str]:
    return {
        ind.id: ind.name.get(locale) for ind in policy.indicators if isinstance(ind, RatedIndicator)
    }


# ---------------------------------------------------------------- a manager's team


@dataclass(frozen=True)
class TeamMember:
    employee_id: str
    name: str
    goals: GoalSheet
    # The released grade; None until results are released (calibration may still change them).
    grade: str | None


@dataclass(frozen=True)
class TeamCycle:
    cycle: Cycle
    members: list[TeamMember]


def team_overview(session: Session, manager_id: str, completed_since: datetime) -> list[TeamCycle]:
    """The manager's reports in running cycles and in cycles completed since `completed_since`,
    newest cycle first, reports by name.

    Reports are whom each cycle recorded (Participant.manager_id), so this lists exactly the
    people viewing_capacity lets the manager read. A constant number of queries, whatever the
    team's size: the home page runs this on every visit.
    """
    p = Participant
    rows = (
        session.execute(
            select(Cycle, p.employee_id, Employee.name)
            .join(p, p.cycle_id == Cycle.id)
            .join(Employee, Employee.id == p.employee_id)
            .where(
                p.manager_id == manager_id,
                or_(
                    Cycle.state == "running",
                    and_(Cycle.state == "completed", Cycle.completed_at >= completed_since),
                ),
            )
            .order_by(Cycle.id.desc(), Employee.name, p.employee_id)
        )
        .tuples()
        .all()
    )
    if not rows:
        return []
    cycle_ids = sorted({c.id for c, _, _ in rows})
    people = sorted({e for _, e, _ in rows})
    goals: dict[tuple[int, str], list[GoalRow]] = defaultdict(list)
    for g in session.scalars(
        select(Goal)
        .where(Goal.cycle_id.in_(cycle_ids), Goal.employee_id.in_(people))
        .order_by(Goal.id)
    ):
        goals[(g.cycle_id, g.employee_id)].append(_goal_row(g))
    grades = {
        (c, e): grade
        for c, e, grade in session.execute(
            select(Result.cycle_id, Result.employee_id, Result.grade).where(
                Result.cycle_id.in_(cycle_ids),
                Result.employee_id.in_(people),
                Result.released_at.is_not(None),
            )
        ).tuples()
    }
    cycles: dict[int, Cycle] = {}
    members: dict[int, list[TeamMember]] = defaultdict(list)
    for cycle, employee_id, name in rows:
        key = (cycle.id, employee_id)
        cycles[cycle.id] = cycle
        members[cycle.id].append(
            TeamMember(employee_id, name, GoalSheet(employee_id, name, goals[key]), grades.get(key))
        )
    return [TeamCycle(cycle, members[cycle_id]) for cycle_id, cycle in cycles.items()]


# ---------------------------------------------------------------- HR progress


@dataclass(frozen=True)
class DepartmentProgress:
    department_id: str
    name: str
    done: int
    total: int


@dataclass(frozen=True)
class StageProgress:
    name: str
    state: str
    due_at: datetime | None
    done: int
    total: int
    attempt: int
    departments: list[DepartmentProgress]


@dataclass(frozen=True)
class OverdueTask:
    person_id: str
    name: str
    department: str
    stage: str
    what: str
    due_at: datetime


@dataclass(frozen=True)
class HrProgress:
    cycle: Cycle
    stages: list[StageProgress]
    overdue: list[OverdueTask]


# stage -> (model, its employee column, states that count as done); must agree with the handlers'
# progress() so the department rows add up to the stage's total.
_UNITS: dict[str, tuple[Any, Any, tuple[str, ...]]] = {
    StageName.interview: (Interview, Interview.employee_id, ("acknowledged",)),
    StageName.improvement: (ImprovementPlan, ImprovementPlan.employee_id, ("closed",)),
    StageName.appeal: (Appeal, Appeal.employee_id, ("accepted", "decided")),
}


def _department_counts(session: Session, cycle_id: int, stage: str) -> dict[str, tuple[int, int]]:
    """department id -> (done, total) of the stage's units of work, by the ratee's department."""
    p = Participant
    if stage == StageName.target_setting:
        open_people = (
            select(Goal.employee_id)
            .where(Goal.cycle_id == cycle_id, Goal.state != "agreed")
            .distinct()
            .scalar_subquery()
        )
        rows = session.execute(
            select(
                p.department_id,
                func.count(p.id),
                func.count(p.id).filter(p.employee_id.not_in(open_people)),
            )
            .where(p.cycle_id == cycle_id)
            .group_by(p.department_id)
        ).tuples()
        return {d: (done, total) for d, total, done in rows}
    if stage == StageName.evaluation:
        ra = RaterAssignment
        rows = session.execute(
            select(
                p.department_id,
                func.count(ra.id).filter(ra.state.in_(["pending", "submitted"])),
                func.count(ra.id).filter(ra.state == "submitted"),
            )
            .join(p, (p.cycle_id == ra.cycle_id) & (p.employee_id == ra.ratee_id))
            .where(ra.cycle_id == cycle_id)
            .group_by(p.department_id)
        ).tuples()
        return {d: (done, total) for d, total, done in rows}
    unit = _UNITS.get(stage)
    if unit is None:
        return {}
    model, employee_column, done_states = unit
    rows = session.execute(
        select(
            p.department_id,
            func.count(model.id),
            func.count(model.id).filter(model.state.in_(done_states)),
        )
        .join(p, (p.cycle_id == model.cycle_id) & (p.employee_id == employee_column))
        .where(model.cycle_id == cycle_id)
        .group_by(p.department_id)
    ).tuples()
    return {d: (done, total) for d, total, done in rows}


def hr_progress(session: Session, cycle: Cycle, now: datetime, locale: str) -> HrProgress:
    policy = cycle_policy(cycle)
    instances = engine.stage_instances(session, cycle.id)
    departments = dict(session.execute(select(Department.id, Department.name)).tuples().all())
    stages: list[StageProgress] = []
    for stage in policy.stages:
        inst = instances.get(stage.name)
        if inst is None:
            stages.append(StageProgress(stage.name, "pending", None, 0, 0, 1, []))
            continue
        progress = engine.handler_for(stage.name).progress(session, cycle, policy, inst)
        by_department = [
            DepartmentProgress(d, departments.get(d, d), done, total)
            for d, (done, total) in sorted(
                _department_counts(session, cycle.id, stage.name).items()
            )
        ]
        stages.append(
            StageProgress(
                stage.name,
                inst.state,
                inst.due_at,
                progress.done,
                progress.total,
                inst.attempt,
                by_department,
            )
        )
    return HrProgress(cycle, stages, overdue_tasks(session, cycle, policy, now, locale))


def overdue_tasks(
    session: Session, cycle: Cycle, policy: Policy, now: datetime, locale: str
) -> list[OverdueTask]:
    """Unfinished personal tasks of open stages whose deadline has passed."""
    if cycle.state != "running":
        return []
    found: list[tuple[str, str, StageInstance, Any]] = []
    for open_stage in open_people_stages(session, cycle.id):
        inst = open_stage.inst
        if now < inst.due_at:
            continue
        for person_id, tasks in open_stage.handler.pending(session, cycle, policy, inst).items():
            found += [(person_id, inst.name, inst, t) for t in tasks]
    people = {
        e.id: e
        for e in session.scalars(
            select(Employee).where(Employee.id.in_(sorted({f[0] for f in found})))
        )
    }
    departments = dict(session.execute(select(Department.id, Department.name)).tuples().all())
    rows = []
    for person_id, stage, inst, task in found:
        person = people.get(person_id)
        rows.append(
            OverdueTask(
                person_id,
                person.name if person else person_id,
                departments.get(person.department_id, "") if person else "",
                stage,
                describe(task, locale),
                inst.due_at,
            )
        )
    return sorted(rows, key=lambda r: (r.due_at, r.department, r.name))


# ---------------------------------------------------------------- audit


@dataclass(frozen=True)
class AuditFilter:
    cycle_id: int | None = None
    person: str = ""
    action: str = ""


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    page: int
    pages: int
    total: int


def audit_page(session: Session, wanted: AuditFilter, page: int) -> AuditPage:
    """Newest first; `person` matches the actor or appears in the subject."""
    conditions: list[Any] = []
    if wanted.cycle_id is not None:
        conditions.append(AuditEvent.cycle_id == wanted.cycle_id)
    if wanted.person:
        conditions.append(
            or_(
                AuditEvent.actor == wanted.person,
                # A % or _ typed in the filter is a character to find, not a wildcard.
                AuditEvent.subject.contains(wanted.person, autoescape=True),
            )
        )
    if wanted.action:
        conditions.append(AuditEvent.action.startswith(wanted.action))
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(*conditions)) or 0
    pages = max(1, -(-total // AUDIT_PAGE_SIZE))
    page = min(max(1, page), pages)
    events = session.scalars(
        select(AuditEvent)
        .where(*conditions)
        .order_by(AuditEvent.id.desc())
        .offset((page - 1) * AUDIT_PAGE_SIZE)
        .limit(AUDIT_PAGE_SIZE)
    ).all()
    return AuditPage(list(events), page, pages, total)


def audit_actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)))


def verify_chain(session: Session) -> audit.VerifyReport:
    return audit.verify(session)
