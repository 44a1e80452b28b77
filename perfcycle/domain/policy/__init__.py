"""Policy files: what a cycle's stages, indicators, raters, grades and deadlines are.

The pydantic models below are the schema (exported to policies/schema.json for editors).
Cross-field rules live in `Policy.check()`; `load_policy` adds file and line to every error.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import DepartmentType, RaterType, StageName

LEVELS = (1, 2, 3, 4, 5)


class PolicyError(InvalidInput):
    """A policy file that cannot be used; one `FILE:LINE: PATH: MESSAGE` line per problem."""


# A policy issue is the shared Problem type, with `field` holding the dotted YAML path.
PolicyIssue = Problem


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Text(Strict):
    """A name in both languages the product ships."""

    zh_CN: str = Field(alias="zh-CN", min_length=1)
    en: str = Field(min_length=1)

    def get(self, locale: str) -> str:
        return self.zh_CN if locale.lower().startswith("zh") else self.en


class Grade(Strict):
    id: str = Field(min_length=1, max_length=20)
    name: Text
    min: float = Field(ge=0, le=200, description="lowest total that earns this grade")
    bonus_factor: float = Field(default=1.0, ge=0, description="1.2 = +20% bonus")


class Category(Strict):
    id: str = Field(min_length=1)
    name: Text
    weight: float = Field(gt=0, le=100, description="percent of the total; categories sum to 100")


class LinearDeduction(Strict):
    """score = max(0, 100 - points * max(0, gap) / per)."""

    type: Literal["linear_deduction"]
    target: float
    per: float = Field(gt=0)
    points: float = Field(ge=0)


class Ratio(Strict):
    """higher is better: min(cap, 100*value/target); lower is better: min(cap, 100*target/value)."""

    type: Literal["ratio"]
    target: float = Field(gt=0)
    cap: float = Field(default=100, gt=0)


class Bars(Strict):
    """Behaviour-anchored 1-5 scale; rater-type-weighted mean of rater means, times 20."""

    type: Literal["bars"]


MetricRule = Annotated[LinearDeduction | Ratio, Field(discriminator="type")]


class MetricIndicator(Strict):
    kind: Literal["metric"]
    id: str = Field(min_length=1)
    name: Text
    category: str
    weight: float = Field(gt=0, le=100, description="percent within its category")
    metric: str = Field(min_length=1, description="metric name the data sources produce")
    higher_is_better: bool = True
    rule: MetricRule
    locked: bool = Field(default=True, description="employees cannot change the target")


class Anchor(Strict):
    zh_CN: str = Field(alias="zh-CN", min_length=1)
    en: str = Field(min_length=1)


class RatedIndicator(Strict):
    kind: Literal["rated"]
    id: str = Field(min_length=1)
    name: Text
    category: str
    weight: float = Field(gt=0, le=100)
    rule: Bars
    anchors: dict[int, Anchor] = Field(
        description="the behaviour each level 1..5 stands for",
        json_schema_extra={"propertyNames": {"pattern": "^[1-5]$"}},
    )
    raters: list[RaterType] | None = Field(
        default=None, description="rater types who rate this item; default: all in `raters`"
    )
    comment_required_for: list[int] = Field(default_factory=lambda: [1, 5])


class VetoTrigger(Strict):
    metric: str = Field(min_length=1)
    above: float = 0


class VetoIndicator(Strict):
    """100 unless triggered; a triggered veto scores 0 and caps the grade at `veto_cap`."""

    kind: Literal["veto"]
    id: str = Field(min_length=1)
    name: Text
    category: str
    weight: float = Field(gt=0, le=100)
    trigger: VetoTrigger


Indicator = Annotated[MetricIndicator | RatedIndicator | VetoIndicator, Field(discriminator="kind")]


class RaterRule(Strict):
    weight: float = Field(gt=0, le=100, description="percent; rater types sum to 100")
    count: int = Field(default=1, ge=1, le=20, description="raters of this type per ratee")


class Extend(Strict):
    extend: int = Field(ge=1, le=60, description="days added once; then the stage advances")


DeadlineAction = Literal["advance", "escalate"] | Extend
DEADLINE_HELP = "must be advance, escalate or {extend: DAYS} with DAYS 1..60"


class Stage(Strict):
    name: StageName
    days: int = Field(ge=1, le=400, description="days from the stage opening to its deadline")
    on_deadline: DeadlineAction = Field(
        default="advance", description="advance, escalate, or {extend: DAYS} (once)"
    )
    escalation_grace_days: int = Field(
        default=2, ge=0, le=30, description="after escalating, days before the stage advances"
    )

    @field_validator("on_deadline", mode="before")
    @classmethod
    def _one_clear_deadline_error(cls, value: Any) -> Any:
        # The union would report one error per branch; authors need a single sentence.
        if isinstance(value, Extend) or value in ("advance", "escalate"):
            return value
        if isinstance(value, dict) and set(value) == {"extend"}:
            days = value["extend"]
            if isinstance(days, int) and not isinstance(days, bool) and 1 <= days <= 60:
                return value
        raise ValueError(f"{DEADLINE_HELP} (got {value!r})")


class CsvSource(Strict):
    kind: Literal["csv"]
    id: str = Field(min_length=1)
    path: str = Field(description="CSV with employee_id,metric,value[,evidence]; relative to CWD")


class SqlSource(Strict):
    kind: Literal["sql"]
    id: str = Field(min_length=1)
    url: str = Field(
        min_length=1, description="SQLAlchemy URL; ${VAR} is read from the environment"
    )
    queries: list[str] = Field(
        min_length=1,
        description="each returns employee_id, metric, value, evidence and may use "
        ":period_start and :period_end",
    )


Source = Annotated[CsvSource | SqlSource, Field(discriminator="kind")]


class CrossCheck(Strict):
    """Flag e.g. satisfaction >= 95 while complaint rate >= 5 (investigate before approving)."""

    id: str = Field(min_length=1)
    if_metric: str
    at_least: float
    and_metric: str
    also_at_least: float
    message: Text


class Calibration(Strict):
    outlier_z: float = Field(default=2.0, gt=0, description="flag totals this many sd from mean")
    cross_checks: list[CrossCheck] = Field(default_factory=list)


class PersonalGoals(Strict):
    """Personal SMART goals each employee adds at target setting and agrees with the manager.

    Together they carry `weight` percent of the total score, taken from `category`; the
    employee splits that share among their goals (the weights must add up to it). An employee
    who adds none leaves the category's indicators their full weight. The superior rates each
    goal's attainment (1-5) in the evaluation stage.
    """

    max: int = Field(default=0, ge=0, le=10, description="how many an employee may add; 0: none")
    min: int = Field(default=0, ge=0, description="how many an employee must add")
    category: str | None = Field(default=None, description="the category they score in")
    weight: float = Field(
        default=0, ge=0, lt=100, description="percent of the total the personal goals share"
    )


class Improvement(Strict):
    grades: list[str] = Field(description="grades that get an improvement plan")
    months: int = Field(default=3, ge=1, le=12)


# ---------------------------------------------------------------- notifications


class Role(StrEnum):
    """Who a mail goes to: people the stage names, or one of the mailing lists in settings."""

    employee = "employee"
    rater = "rater"
    manager = "manager"
    owner = "owner"
    hr = "hr"
    committee = "committee"
    supervision = "supervision"


# Roles that are mailing lists (settings.hr_email, committee_email, supervision_email).
GROUP_ROLES = frozenset({Role.hr, Role.committee, Role.supervision})
# Stages where people have tasks of their own: reminders and escalations apply to these.
PEOPLE_STAGES = (
    StageName.target_setting,
    StageName.evaluation,
    StageName.interview,
    StageName.improvement,
    StageName.appeal,
)

_E, _R, _M, _O = Role.employee, Role.rater, Role.manager, Role.owner
_HR, _COMMITTEE, _SUPERVISION = Role.hr, Role.committee, Role.supervision
_GROUPS = (_HR, _COMMITTEE, _SUPERVISION)

# event -> (default recipients, the roles whose mail context the code writes). A role outside
# the second tuple would get a mail its template cannot fill, so check() refuses it.
EVENT_ROLES: dict[str, tuple[tuple[Role, ...], tuple[Role, ...]]] = {
    "goals_to_agree": ((_E,), (_E,)),
    "goals_returned": ((_E,), (_E,)),
    "goals_submitted": ((_M,), (_M,)),
    "evaluation_assigned": ((_R,), (_R,)),
    "stage_opened": ((_HR,), _GROUPS),
    "stage_closed": ((_HR,), _GROUPS),
    "stage_escalated": ((_HR,), _GROUPS),
    "calibration_ready": ((_COMMITTEE,), (_COMMITTEE, _HR)),
    # Written to the employee, so no HR copy: "your results", "your appeal" would mislead HR.
    "results_released": ((_E,), (_E,)),
    "interview_scheduled": ((_E, _M), (_E, _M)),
    "interview_recorded": ((_E,), (_E,)),
    "improvement_plan_created": ((_E, _O), (_E, _O)),
    "improvement_plan_closed": ((_E,), (_E,)),
    "improvement_checkin_due": ((_O,), (_O, _E)),
    "appeal_window_open": ((_E,), (_E,)),
    "appeal_received": ((_E, _SUPERVISION), (_E, _SUPERVISION)),
    "appeal_decided": ((_E, _M), (_E, _M)),
    "reminder": ((_E, _R, _M, _O), (_E, _R, _M, _O)),
    "escalation": ((_M,), (_M, _HR)),
}
# Templates are named after the events (perfcycle/notifications/templates/<locale>/<event>.*.j2).
TEMPLATES = tuple(EVENT_ROLES)


class EventSwitch(Strict):
    """An event's mail: which template, and whether it is sent. Keys left out keep defaults."""

    template: str | None = Field(
        default=None,
        description="template to render (one of the event names); default: the event's own",
        json_schema_extra={"enum": [*TEMPLATES, None]},
    )
    enabled: bool = Field(default=True, description="false: this event sends nothing")


class EventRule(EventSwitch):
    to: list[Role] | None = Field(
        default=None,
        description="who gets it: employee, rater, manager, owner (people the stage names) "
        "and hr, committee, supervision (the mailing lists in settings)",
    )


@dataclass(frozen=True)
class Rule:
    """An event's resolved rule: the policy's keys over the defaults."""

    event: str
    template: str
    to: tuple[Role, ...]
    enabled: bool


def _event(to: Sequence[Role], what: str) -> Any:
    return Field(default=EventRule(to=list(to)), description=what)


class Events(Strict):
    """Which mail goes to whom on which event. Every event has a default; list only changes."""

    goals_to_agree: EventRule = _event([_E], "target setting opened: agree your goals")
    goals_returned: EventRule = _event([_E], "the manager returned the goals with a comment")
    goals_submitted: EventRule = _event(
        [_M], "an employee signed their goals: their manager (or HR) approves or returns them"
    )
    evaluation_assigned: EventRule = _event(
        [_R], "evaluation opened: one mail per rater listing all their ratees"
    )
    stage_opened: EventRule = _event([_HR], "a stage opened")
    stage_closed: EventRule = _event([_HR], "a stage closed")
    stage_escalated: EventRule = _event([_HR], "a stage passed its deadline unfinished")
    calibration_ready: EventRule = _event(
        [_COMMITTEE], "results computed: the committee reviews and approves (flow-run link)"
    )
    results_released: EventRule = _event([_E], "calibrated results are released")
    interview_scheduled: EventRule = _event(
        [_E, _M], "interview stage opened: each employee, and each manager with their list"
    )
    interview_recorded: EventRule = _event([_E], "the manager recorded the interview")
    improvement_plan_created: EventRule = _event([_E, _O], "an improvement plan was created")
    improvement_plan_closed: EventRule = _event([_E], "the owner closed the improvement plan")
    improvement_checkin_due: EventRule = _event(
        [_O], "no check-in yet this month for an open improvement plan"
    )
    appeal_window_open: EventRule = _event([_E], "results are final unless appealed by ...")
    appeal_received: EventRule = _event([_E, _SUPERVISION], "an appeal was filed")
    appeal_decided: EventRule = _event(
        [_E, _M], "the supervision committee decided (the manager: only if the grade changed)"
    )
    reminder: EventRule = _event(
        [_E, _R, _M, _O], "daily digest of pending tasks; `to`: whose tasks are reminded"
    )
    escalation: EventSwitch = Field(
        default=EventSwitch(),
        description="overdue tasks; who gets it is `notifications.escalation.to`",
    )


class Reminders(Strict):
    days_before: list[Annotated[int, Field(ge=1, le=60)]] = Field(
        default_factory=lambda: [3, 1],
        description="remind people with unfinished work this many days before the deadline; "
        "[] for no reminders",
    )


class Escalation(Strict):
    after_overdue_days: int = Field(
        default=1, ge=0, le=60, description="days past the stage's deadline before escalating"
    )
    to: Literal["manager", "hr"] = Field(
        default="manager",
        description="manager: each overdue person's manager (HR for someone without one); "
        "hr: one list to HR",
    )


class StageNotifications(Strict):
    """Overrides for one stage; keys left out follow `notifications.reminders`/`escalation`."""

    reminders: Reminders | None = None
    escalation: Escalation | None = None


class Checkins(Strict):
    day_of_month: int = Field(
        default=20,
        ge=1,
        le=28,
        description="from this day on, owners of open improvement plans without a check-in "
        "for the month are reminded (once a month)",
    )


class Notifications(Strict):
    """Who is told what, when: task mails, reminders, escalations (defaults apply throughout)."""

    reminders: Reminders = Reminders()
    escalation: Escalation = Escalation()
    checkins: Checkins = Checkins()
    stages: dict[StageName, StageNotifications] = Field(
        default_factory=dict, description="per-stage reminders/escalation"
    )
    events: Events = Events()

    def rule(self, event: str, stage: str | None = None) -> Rule:
        """The event's rule; KeyError for an event that does not exist."""
        default_to, _ = EVENT_ROLES[event]
        chosen: EventSwitch = getattr(self.events, event)
        if event == "escalation":
            to: tuple[Role, ...] = (Role(self.escalation_for(stage).to),)
        else:
            listed = chosen.to if isinstance(chosen, EventRule) else None
            to = tuple(listed) if listed is not None else default_to
        return Rule(event, chosen.template or event, to, chosen.enabled)

    def reminder_days(self, stage: str) -> list[int]:
        """Days before the deadline to remind at, furthest first."""
        override = self._stage(stage)
        reminders = override.reminders if override and override.reminders else self.reminders
        return sorted(set(reminders.days_before), reverse=True)

    def escalation_for(self, stage: str | None) -> Escalation:
        override = self._stage(stage) if stage else None
        return override.escalation if override and override.escalation else self.escalation

    def _stage(self, stage: str | None) -> StageNotifications | None:
        if stage is None or stage not in StageName.__members__:
            return None
        return self.stages.get(StageName(stage))


class Policy(Strict):
    id: str = Field(description="the file name without .yaml; filled in by the loader")
    title: Text
    department_types: list[DepartmentType] = Field(min_length=1)
    grades: list[Grade] = Field(min_length=2, description="highest first")
    veto_cap: str = Field(description="a triggered veto caps the grade here")
    categories: list[Category] = Field(min_length=1)
    indicators: list[Indicator] = Field(min_length=1)
    raters: dict[RaterType, RaterRule]
    anonymity_threshold: int = Field(default=3, ge=1)
    sources: list[Source] = Field(default_factory=list)
    stages: list[Stage] = Field(min_length=1)
    calibration: Calibration = Calibration()
    improvement: Improvement
    personal_goals: PersonalGoals = Field(
        default=PersonalGoals(), description="personal SMART goals at target setting"
    )
    notifications: Notifications = Field(
        default=Notifications(), description="which mail goes to whom, reminders, escalation"
    )

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def grade_ids(self) -> list[str]:
        return [g.id for g in self.grades]

    def check(self) -> list[Problem]:
        """Cross-field rules; each problem names the dotted YAML path (file/line: the loader)."""
        return [
            *_check_weights(self),
            *_check_unique_ids(self),
            *_check_grades(self),
            *_check_indicators(self),
            *_check_personal_goals(self),
            *_check_raters(self),
            *_check_stages(self),
            *_check_sources(self),
            *_check_notifications(self),
        ]


# ---------------------------------------------------------------- cross-field rules


def _num(value: float) -> str:
    return f"{round(value, 4):g}"


def _sums_to_100(weights: Sequence[float]) -> bool:
    return abs(sum(weights) - 100) < 1e-6


def _sum_problem(field: str, weights: Sequence[float]) -> list[Problem]:
    if _sums_to_100(weights):
        return []
    return [Problem(f"weights sum to {_num(sum(weights))}, must be 100", field=field)]


def _check_weights(p: Policy) -> list[Problem]:
    problems = _sum_problem("categories", [c.weight for c in p.categories])
    problems += _sum_problem("raters", [r.weight for r in p.raters.values()])
    for i, cat in enumerate(p.categories):
        members = [ind for ind in p.indicators if ind.category == cat.id]
        if not members:
            problems.append(
                Problem(f"category '{cat.id}' has no indicators", field=f"categories.{i}")
            )
            continue
        listed = ", ".join(f"{ind.id} {_num(ind.weight)}" for ind in members)
        weights = [ind.weight for ind in members]
        if not _sums_to_100(weights):
            problems.append(
                Problem(
                    f"weights of category '{cat.id}' sum to {_num(sum(weights))}, must be 100 "
                    f"({listed})",
                    field="indicators",
                )
            )
    return problems


def _duplicates(ids: Sequence[str], prefix: str, leaf: str | None = "id") -> list[Problem]:
    first: dict[str, int] = {}
    problems = []
    for i, ident in enumerate(ids):
        if ident in first:
            problems.append(
                Problem(
                    f"duplicate {leaf or 'entry'} '{ident}' (first at {prefix}.{first[ident]})",
                    field=f"{prefix}.{i}.{leaf}" if leaf else f"{prefix}.{i}",
                )
            )
        else:
            first[ident] = i
    return problems


def _check_unique_ids(p: Policy) -> list[Problem]:
    return [
        *_duplicates([c.id for c in p.categories], "categories"),
        *_duplicates([ind.id for ind in p.indicators], "indicators"),
        *_duplicates([g.id for g in p.grades], "grades"),
        *_duplicates([s.name.value for s in p.stages], "stages", leaf="name"),
        *_duplicates([s.id for s in p.sources], "sources"),
        *_duplicates([c.id for c in p.calibration.cross_checks], "calibration.cross_checks"),
    ]


def _unknown_grade(p: Policy, grade: str, field: str) -> list[Problem]:
    if grade in p.grade_ids():
        return []
    return [Problem(f"unknown grade '{grade}' (grades: {', '.join(p.grade_ids())})", field=field)]


def _check_grades(p: Policy) -> list[Problem]:
    problems: list[Problem] = []
    for i in range(1, len(p.grades)):
        above, grade = p.grades[i - 1], p.grades[i]
        if grade.min >= above.min:
            problems.append(
                Problem(
                    f"grades must be strictly descending by min: {_num(grade.min)} is not below "
                    f"{_num(above.min)} ({above.id})",
                    field=f"grades.{i}.min",
                )
            )
        if grade.bonus_factor > above.bonus_factor:
            problems.append(
                Problem(
                    f"bonus_factor {_num(grade.bonus_factor)} is above the higher grade "
                    f"{above.id}'s {_num(above.bonus_factor)}",
                    field=f"grades.{i}.bonus_factor",
                )
            )
    last = len(p.grades) - 1
    if p.grades[last].min != 0:
        problems.append(
            Problem(
                f"the last grade's min must be 0, is {_num(p.grades[last].min)}",
                field=f"grades.{last}.min",
            )
        )
    problems += _unknown_grade(p, p.veto_cap, "veto_cap")
    if p.grades and p.veto_cap == p.grades[0].id:
        problems.append(
            Problem(
                f"'{p.veto_cap}' is the highest grade, so a triggered veto would cap nothing",
                field="veto_cap",
            )
        )
    for i, grade_id in enumerate(p.improvement.grades):
        problems += _unknown_grade(p, grade_id, f"improvement.grades.{i}")
    return problems


def _check_anchors(ind: RatedIndicator, at: str) -> list[Problem]:
    levels = set(ind.anchors)
    if levels == set(LEVELS):
        return []
    details = []
    if missing := sorted(set(LEVELS) - levels):
        details.append("missing " + ", ".join(map(str, missing)))
    if extra := sorted(levels - set(LEVELS)):
        details.append("unexpected " + ", ".join(map(str, extra)))
    return [
        Problem(
            f"anchors must describe exactly levels 1..5 ({'; '.join(details)})",
            field=f"{at}.anchors",
        )
    ]


def _check_rated(p: Policy, ind: RatedIndicator, at: str) -> list[Problem]:
    problems = _check_anchors(ind, at)
    for j, rater in enumerate(ind.raters or []):
        if rater not in p.raters:
            problems.append(
                Problem(
                    f"rater type '{rater.value}' is not in `raters` "
                    f"({', '.join(r.value for r in p.raters)})",
                    field=f"{at}.raters.{j}",
                )
            )
    problems += _duplicates([r.value for r in ind.raters or []], f"{at}.raters", leaf=None)
    if ind.raters is not None and not ind.raters:
        problems.append(Problem("must list at least one rater type", field=f"{at}.raters"))
    for j, level in enumerate(ind.comment_required_for):
        if level not in LEVELS:
            problems.append(
                Problem(f"level {level} is not within 1..5", field=f"{at}.comment_required_for.{j}")
            )
    return problems


def _check_indicators(p: Policy) -> list[Problem]:
    category_ids = [c.id for c in p.categories]
    problems: list[Problem] = []
    for i, ind in enumerate(p.indicators):
        at = f"indicators.{i}"
        if ind.category not in category_ids:
            problems.append(
                Problem(
                    f"unknown category '{ind.category}' (categories: {', '.join(category_ids)})",
                    field=f"{at}.category",
                )
            )
        if isinstance(ind, RatedIndicator):
            problems += _check_rated(p, ind, at)
    return problems


def _check_personal_goals(p: Policy) -> list[Problem]:
    pg, at = p.personal_goals, "personal_goals"
    if pg.max == 0:
        if pg.min or pg.weight or pg.category:
            message = "max is 0 (no personal goals): leave out min, weight and category"
            return [Problem(message, field=at)]
        return []
    problems: list[Problem] = []
    if pg.min > pg.max:
        problems.append(Problem(f"min {pg.min} is more than max {pg.max}", field=f"{at}.min"))
    category = next((c for c in p.categories if c.id == pg.category), None)
    if category is None:
        ids = ", ".join(c.id for c in p.categories)
        problems.append(
            Problem(f"name the category they score in (categories: {ids})", field=f"{at}.category")
        )
    elif not 0 < pg.weight < category.weight:
        problems.append(
            Problem(
                f"must be above 0 and below the weight of category '{category.id}' "
                f"({_num(category.weight)}), is {_num(pg.weight)}",
                field=f"{at}.weight",
            )
        )
    if RaterType.superior not in p.raters:
        problems.append(
            Problem("the superior rates personal goals: add a superior to `raters`", field=at)
        )
    return problems


def _check_raters(p: Policy) -> list[Problem]:
    problems: list[Problem] = []
    own = p.raters.get(RaterType.self_)
    if own is not None and own.count != 1:
        problems.append(
            Problem(
                f"a ratee rates themself once; count must be 1, is {own.count}",
                field="raters.self.count",
            )
        )
    others = {t: r.count for t, r in p.raters.items() if t != RaterType.self_}
    # The threshold applies to each rater group on its own (the transparency page shows a
    # group's scores only when that many of it answered), so the largest group must reach it.
    if p.anonymity_threshold > max(others.values(), default=0):
        listed = ", ".join(f"{t.value} {n}" for t, n in others.items()) or "none"
        problems.append(
            Problem(
                f"{p.anonymity_threshold} can never be met: no rater group besides self has "
                f"that many raters ({listed})",
                field="anonymity_threshold",
            )
        )
    return problems


def _positions(p: Policy) -> dict[StageName, int]:
    positions: dict[StageName, int] = {}
    for i, stage in enumerate(p.stages):
        positions.setdefault(stage.name, i)
    return positions


# (stage, stages it must follow when they are present)
_STAGE_ORDER: tuple[tuple[StageName, tuple[StageName, ...]], ...] = (
    (StageName.evaluation, (StageName.target_setting, StageName.data_collection)),
    (StageName.calibration, (StageName.evaluation,)),
    (StageName.interview, (StageName.calibration,)),
    (StageName.appeal, (StageName.calibration,)),
    # Plans are agreed in the interview and target the final (calibrated) grades.
    (StageName.improvement, (StageName.calibration, StageName.interview)),
)


def _check_stages(p: Policy) -> list[Problem]:
    at = _positions(p)
    problems: list[Problem] = []
    if StageName.calibration in at and StageName.evaluation not in at:
        problems.append(
            Problem(
                "calibration needs an evaluation stage before it",
                field=f"stages.{at[StageName.calibration]}.name",
            )
        )
    for stage, predecessors in _STAGE_ORDER:
        for before in predecessors:
            if stage in at and before in at and at[before] > at[stage]:
                problems.append(
                    Problem(
                        f"{stage.value} must come after {before.value} (stages.{at[before]})",
                        field=f"stages.{at[stage]}.name",
                    )
                )
    rated = any(isinstance(ind, RatedIndicator) for ind in p.indicators)
    if rated and StageName.evaluation not in at:
        problems.append(Problem("rated indicators need an evaluation stage", field="stages"))
    measured = any(isinstance(ind, MetricIndicator | VetoIndicator) for ind in p.indicators)
    if measured and StageName.data_collection not in at:
        problems.append(
            Problem("metric and veto indicators need a data_collection stage", field="stages")
        )
    return problems


def _metric_uses(p: Policy) -> Iterator[tuple[str, str]]:
    for i, ind in enumerate(p.indicators):
        if isinstance(ind, MetricIndicator):
            yield ind.metric, f"indicators.{i}.metric"
        elif isinstance(ind, VetoIndicator):
            yield ind.trigger.metric, f"indicators.{i}.trigger.metric"
    for i, check in enumerate(p.calibration.cross_checks):
        yield check.if_metric, f"calibration.cross_checks.{i}.if_metric"
        yield check.and_metric, f"calibration.cross_checks.{i}.and_metric"


def _check_sources(p: Policy) -> list[Problem]:
    problems: list[Problem] = []
    for i, source in enumerate(p.sources):
        if not isinstance(source, SqlSource):
            continue
        for j, query in enumerate(source.queries):
            missing = [b for b in (":period_start", ":period_end") if b not in query]
            if missing:
                problems.append(
                    Problem(
                        f"the query must filter on the period: {' and '.join(missing)} not used",
                        field=f"sources.{i}.queries.{j}",
                    )
                )
    uses = list(_metric_uses(p))
    if uses and not p.sources:
        problems.append(
            Problem("metric and veto indicators need at least one source", field="sources")
        )
    # A CSV can carry any metric; only SQL-only policies can be checked for typos in metric names.
    if p.sources and all(isinstance(s, SqlSource) for s in p.sources):
        queries = [q for s in p.sources if isinstance(s, SqlSource) for q in s.queries]
        for metric, field in uses:
            if not any(f"'{metric}'" in q for q in queries):
                problems.append(
                    Problem(
                        f"no source query produces metric '{metric}' "
                        f"(sources: {', '.join(s.id for s in p.sources)})",
                        field=field,
                    )
                )
    return problems


def _check_notifications(p: Policy) -> list[Problem]:
    n = p.notifications
    problems = _check_events(n.events)
    problems += _check_days_before(n.reminders, "notifications.reminders")
    present = _positions(p)
    for stage, override in n.stages.items():
        at = f"notifications.stages.{stage.value}"
        if stage not in PEOPLE_STAGES:
            people = ", ".join(s.value for s in PEOPLE_STAGES)
            problems.append(
                Problem(
                    f"{stage.value} has no personal tasks to remind of or escalate "
                    f"(stages with tasks: {people})",
                    field=at,
                )
            )
        elif stage not in present:
            problems.append(Problem(f"{stage.value} is not in `stages`", field=at))
        if override.reminders is not None:
            problems += _check_days_before(override.reminders, f"{at}.reminders")
            if stage in present:
                problems += _check_days_within(p, stage, override.reminders, f"{at}.reminders")
    return problems


def _check_events(events: Events) -> list[Problem]:
    problems: list[Problem] = []
    for event, (_, supported) in EVENT_ROLES.items():
        chosen: EventSwitch = getattr(events, event)
        at = f"notifications.events.{event}"
        if chosen.template is not None and chosen.template not in TEMPLATES:
            close = difflib.get_close_matches(chosen.template, TEMPLATES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                Problem(
                    f"unknown template '{chosen.template}' ({hint}templates: "
                    f"{', '.join(TEMPLATES)})",
                    field=f"{at}.template",
                )
            )
        if not isinstance(chosen, EventRule) or chosen.to is None:
            continue
        for i, role in enumerate(chosen.to):
            if role not in supported:
                problems.append(
                    Problem(
                        f"{event} cannot go to {role.value}: its mail is written for "
                        f"{', '.join(r.value for r in supported)}",
                        field=f"{at}.to.{i}",
                    )
                )
        problems += _duplicates([r.value for r in chosen.to], f"{at}.to", leaf=None)
        if not chosen.to and chosen.enabled:
            problems.append(
                Problem("no recipients; write `enabled: false` to turn it off", field=f"{at}.to")
            )
    return problems


def _check_days_before(reminders: Reminders, at: str) -> list[Problem]:
    return _duplicates([str(d) for d in reminders.days_before], f"{at}.days_before", leaf=None)


def _check_days_within(
    p: Policy, stage: StageName, reminders: Reminders, at: str
) -> list[Problem]:
    days = p.stage(stage).days
    return [
        Problem(
            f"{d} days before the deadline is before {stage.value} opens (it lasts {days} days)",
            field=f"{at}.days_before.{i}",
        )
        for i, d in enumerate(reminders.days_before)
        if d >= days
    ]


# ---------------------------------------------------------------- loading


def load_policy(path: Path) -> Policy:
    """Read, validate and check a policy file; PolicyError lists every problem with its line."""
    path = Path(path)
    file = str(path)
    root, data = _parse_yaml(path)
    problems = _duplicate_keys(root, file)
    if not isinstance(data, dict):
        raise PolicyError(
            problems or [Problem("expected a mapping of policy keys at the top", file, 1)]
        )
    if "id" in data:
        problems.append(
            Problem(
                "the id is the file name; remove this key",
                file,
                _line(root, ["id"]),
                "id",
            )
        )
    try:
        policy = Policy.model_validate({**data, "id": path.stem})
    except ValidationError as err:
        problems += _pydantic_problems(err, root, data, file)
        raise PolicyError(_in_file_order(_unique(problems))) from None
    problems += [
        Problem(p.message, file, _line(root, _split(p.field)), p.field) for p in policy.check()
    ]
    if problems:
        raise PolicyError(_in_file_order(problems))
    return policy


def _in_file_order(problems: Sequence[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def _parse_yaml(path: Path) -> tuple[yaml.Node, Any]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem("no such policy file", file)]) from None
    except UnicodeDecodeError:
        raise PolicyError([Problem("not UTF-8 text; is this a YAML policy file?", file)]) from None
    except OSError as err:
        raise PolicyError([Problem(f"cannot read the file: {err.strerror}", file)]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyError([Problem("the file is empty; expected a policy mapping", file, 1)])
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        reason = err.problem or "cannot be parsed"
        if err.context:
            reason += f" ({err.context})"
        raise PolicyError([Problem(f"not valid YAML: {reason}", file, line)]) from None
    except yaml.YAMLError as err:
        raise PolicyError([Problem(f"not valid YAML: {err}", file)]) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, file: str, path: str = "") -> list[Problem]:
    """safe_load keeps the last of two equal keys silently; an author wants to know."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            child = f"{path}.{name}" if path else name
            if name in seen:
                problems.append(
                    Problem(
                        f"duplicate key (first at line {seen[name]})",
                        file,
                        key.start_mark.line + 1,
                        child,
                    )
                )
            else:
                seen[name] = key.start_mark.line + 1
            problems += _duplicate_keys(value, file, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, file, f"{path}.{i}" if path else str(i))
    return problems


def _split(field: str | None) -> list[str]:
    return field.split(".") if field else []


def _child(node: yaml.Node, part: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of `part` in a mapping or sequence node."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == part:
                return key, value
    elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        item = node.value[int(part)]
        return item, item
    return None, None


def _line(root: yaml.Node, parts: Sequence[str]) -> int:
    """Line of the deepest node on the path: the key line for a mapping entry."""
    line = root.start_mark.line + 1
    node: yaml.Node | None = root
    for part in parts:
        if node is None:
            break
        key, node = _child(node, part)
        if key is None:
            break
        line = key.start_mark.line + 1
    return line


def _discriminator(node: yaml.Node) -> str | None:
    for name in ("kind", "type"):
        _, value = _child(node, name)
        if isinstance(value, yaml.ScalarNode):
            return str(value.value)
    return None


def _yaml_path(loc: tuple[int | str, ...], root: yaml.Node, error_type: str) -> list[str]:
    """Turn pydantic's loc into the YAML path: drop union tags and `[key]` markers."""
    parts: list[str] = []
    node: yaml.Node | None = root
    entered = True
    for raw in loc:
        part = str(raw)
        if part == "[key]":
            continue
        if node is not None and entered and _discriminator(node) == part:
            entered = False  # a tagged union names the chosen member right after its value
            continue
        key, child = _child(node, part) if node is not None else (None, None)
        if key is not None:
            parts.append(part)
            node, entered = child, True
        elif error_type == "missing" and raw == loc[-1]:
            parts.append(part)
        # anything else is a union member's label, not a YAML key
    return parts


def _matches_tag(model: type[BaseModel], value: Any) -> bool:
    """Whether `value` (a YAML mapping) selects this member of a tagged union."""
    if not isinstance(value, dict):
        return True
    for tag in ("kind", "type"):
        info = model.model_fields.get(tag)
        if info is not None and tag in value:
            return value[tag] in getattr(info.annotation, "__args__", ())
    return True


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    keys = [info.alias or name for name, info in model.model_fields.items()]
    # The policy's id is the file name, never a key in the file.
    return [k for k in keys if k != "id"] if model is Policy else keys


def _pydantic_message(error: ErrorDetails, parts: list[str], data: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key_message(parts, data)
    if kind == "missing":
        return "required key is missing"
    ctx = error.get("ctx", {})
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')} (got '{ctx.get('tag')}')"
    if kind == "union_tag_not_found":
        return f"required key {ctx.get('discriminator')} is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "value_error" and (value is None or isinstance(value, str | int | float | bool)):
        message += f" (got {value!r})"
    return message


def _unknown_key_message(parts: list[str], data: Any) -> str:
    key = parts[-1] if parts else "?"
    model = _model_for_mapping(parts[:-1], data)
    if model is None:
        return f"unknown key '{key}'"
    allowed = _allowed_keys(model)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{key}' ({hint}allowed: {', '.join(allowed)})"


def _step(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        for key, child in value.items():
            if str(key) == part:
                return child
        return None
    if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        return value[int(part)]
    return None


def _model_for_mapping(parts: Sequence[str], data: Any) -> type[BaseModel] | None:
    """Walk the schema along a YAML path, choosing tagged-union members by the data's tag."""
    annotation: Any = Policy
    value = data
    for part in parts:
        model = _pick_model(annotation, value)
        if model is not None:
            info = model.model_fields.get(part) or next(
                (f for f in model.model_fields.values() if f.alias == part), None
            )
            if info is None:
                return None
            annotation = info.annotation
        else:
            annotation = _item_type(annotation)
            if annotation is None:
                return None
        value = _step(value, part)
    return _pick_model(annotation, value)


def _strip(annotation: Any) -> Any:
    while hasattr(annotation, "__metadata__"):
        annotation = annotation.__origin__
    return annotation


def _pick_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [_strip(a) for a in getattr(annotation, "__args__", ())]
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if getattr(annotation, "__origin__", None) in (list, dict):
        return None
    for model in models:
        if _matches_tag(model, value):
            return model
    return None


def _item_type(annotation: Any) -> Any:
    annotation = _strip(annotation)
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    origin = getattr(annotation, "__origin__", None)
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    if len(args) == 1:  # X | None
        return _item_type(args[0])
    return None


def _pydantic_problems(
    err: ValidationError, root: yaml.Node, data: Any, file: str
) -> list[Problem]:
    problems = []
    for error in err.errors():
        parts = _yaml_path(error["loc"], root, error["type"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
            parts = [*parts, tag] if tag else parts
        field = ".".join(parts) or None
        problems.append(
            Problem(_pydantic_message(error, parts, data), file, _line(root, parts), field)
        )
    return problems


def _unique(problems: Sequence[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------- finding policies


def _policies_dir(policies_dir: Path | None) -> Path:
    return policies_dir if policies_dir is not None else get_settings().policies_dir


def list_policies(policies_dir: Path | None = None) -> list[str]:
    """Names (file stems) of the policies shipped in the policies directory, sorted."""
    return sorted(p.stem for p in _policies_dir(policies_dir).glob("*.yaml") if p.is_file())


def policy_path(name: str, policies_dir: Path | None = None) -> Path:
    """A policy name (`external-service`) in the policies directory, or a path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") or len(as_path.parts) > 1:
        if as_path.is_file():
            return as_path
        raise PolicyError([Problem("no such policy file", str(as_path))])
    folder = _policies_dir(policies_dir)
    candidate = folder / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    available = ", ".join(list_policies(folder)) or f"none in {folder}"
    raise PolicyError(
        [Problem(f"unknown policy '{name}' (available: {available})", field="policy")]
    )


def policy_digest(path: Path) -> str:
    """sha256 of the file bytes: a cycle records exactly which policy text it ran under."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- JSON schema for editors

SCHEMA_FILE = "schema.json"


def export_schema() -> dict[str, Any]:
    """The JSON Schema editors use to complete and validate policy YAML files."""
    schema = Policy.model_json_schema(by_alias=True)
    # The id comes from the file name; the loader rejects an `id` key, so the schema does too.
    schema["properties"].pop("id", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "id"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "perfcycle review policy",
        "description": (
            "A performance-review policy: stages and deadlines, indicator categories and "
            "weights, metric and behaviour-anchored (BARS) indicators, rater weights, grades and "
            "data sources. Names are given in zh-CN and en. Cross-field rules (weights sum to "
            "100, stage order, ...) are checked by `perfcycle policy check FILE`."
        ),
    }
