"""The policy's shape: the pydantic models a policy file and a cycle's snapshot are read into.

Exported to policies/schema.json for editors (jsonschema.py). Cross-field rules are in checks.py,
reading a file with file/line errors in loader.py, reading a cycle's stored copy in snapshot.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from perfcycle.domain.models import DepartmentType, RaterType, StageName
from perfcycle.notifications.events import EVENT_ROLES, TEMPLATES, Role

LEVELS = (1, 2, 3, 4, 5)


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


def _event(event: str, what: str) -> Any:
    # The default recipients are the vocabulary's (notifications/events.py), not repeated here.
    return Field(default=EventRule(to=list(EVENT_ROLES[event][0])), description=what)


class Events(Strict):
    """Which mail goes to whom on which event. Every event has a default; list only changes."""

    goals_to_agree: EventRule = _event("goals_to_agree", "target setting opened: agree your goals")
    goals_returned: EventRule = _event(
        "goals_returned", "the manager returned the goals with a comment"
    )
    goals_submitted: EventRule = _event(
        "goals_submitted",
        "an employee signed their goals: their manager (or HR) approves or returns them",
    )
    evaluation_assigned: EventRule = _event(
        "evaluation_assigned", "evaluation opened: one mail per rater listing all their ratees"
    )
    stage_opened: EventRule = _event("stage_opened", "a stage opened")
    stage_closed: EventRule = _event("stage_closed", "a stage closed")
    stage_escalated: EventRule = _event("stage_escalated", "a stage passed its deadline unfinished")
    calibration_ready: EventRule = _event(
        "calibration_ready", "results computed: the committee reviews and approves (flow-run link)"
    )
    results_released: EventRule = _event("results_released", "calibrated results are released")
    interview_scheduled: EventRule = _event(
        "interview_scheduled",
        "interview stage opened: each employee, and each manager with their list",
    )
    interview_recorded: EventRule = _event(
        "interview_recorded", "the manager recorded the interview"
    )
    improvement_plan_created: EventRule = _event(
        "improvement_plan_created", "an improvement plan was created"
    )
    improvement_plan_closed: EventRule = _event(
        "improvement_plan_closed", "the owner closed the improvement plan"
    )
    improvement_checkin_due: EventRule = _event(
        "improvement_checkin_due", "no check-in yet this month for an open improvement plan"
    )
    appeal_window_open: EventRule = _event(
        "appeal_window_open", "results are final unless appealed by ..."
    )
    appeal_received: EventRule = _event("appeal_received", "an appeal was filed")
    appeal_decided: EventRule = _event(
        "appeal_decided",
        "the supervision committee decided (the manager: only if the grade changed)",
    )
    reminder: EventRule = _event(
        "reminder", "daily digest of pending tasks; `to`: whose tasks are reminded"
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


# ---------------------------------------------------------------- walking the schema along data
# The loader (to name the model of an unknown key) and the snapshot reader (to drop keys this
# release no longer has) both follow a value down the models, choosing union members by tag.


def _matches_tag(model: type[BaseModel], value: Any) -> bool:
    """Whether `value` (a mapping) selects this member of a tagged union."""
    if not isinstance(value, dict):
        return True
    for tag in ("kind", "type"):
        info = model.model_fields.get(tag)
        if info is not None and tag in value:
            return value[tag] in getattr(info.annotation, "__args__", ())
    return True


def strip_annotated(annotation: Any) -> Any:
    while hasattr(annotation, "__metadata__"):
        annotation = annotation.__origin__
    return annotation


def pick_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    annotation = strip_annotated(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [strip_annotated(a) for a in getattr(annotation, "__args__", ())]
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if getattr(annotation, "__origin__", None) in (list, dict):
        return None
    for model in models:
        if _matches_tag(model, value):
            return model
    return None


def item_type(annotation: Any) -> Any:
    annotation = strip_annotated(annotation)
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    origin = getattr(annotation, "__origin__", None)
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    if len(args) == 1:  # X | None
        return item_type(args[0])
    return None
