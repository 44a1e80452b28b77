"""Policy files: what a cycle's stages, indicators, raters, grades and deadlines are.

The pydantic models below are the schema (exported to policies/schema.json for editors).
Cross-field rules live in `Policy.check()`; `load_policy` adds file and line to every error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perfcycle.models import DepartmentType, RaterType, StageName


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
    id: str
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
    id: str
    name: Text
    category: str
    weight: float = Field(gt=0, le=100, description="percent within its category")
    metric: str = Field(description="metric name the data sources produce")
    higher_is_better: bool = True
    rule: MetricRule
    locked: bool = Field(default=True, description="employees cannot change the target")


class Anchor(Strict):
    zh_CN: str = Field(alias="zh-CN")
    en: str


class RatedIndicator(Strict):
    kind: Literal["rated"]
    id: str
    name: Text
    category: str
    weight: float = Field(gt=0, le=100)
    rule: Bars
    anchors: dict[int, Anchor] = Field(description="the behaviour each level 1..5 stands for")
    raters: list[RaterType] | None = Field(
        default=None, description="rater types who rate this item; default: all in `raters`"
    )
    comment_required_for: list[int] = Field(default_factory=lambda: [1, 5])


class VetoTrigger(Strict):
    metric: str
    above: float = 0


class VetoIndicator(Strict):
    """100 unless triggered; a triggered veto scores 0 and caps the grade at `veto_cap`."""

    kind: Literal["veto"]
    id: str
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


class Stage(Strict):
    name: StageName
    days: int = Field(ge=1, le=400, description="days from the stage opening to its deadline")
    on_deadline: DeadlineAction = "advance"
    escalation_grace_days: int = Field(
        default=2, ge=0, le=30, description="after escalating, days before the stage advances"
    )


class CsvSource(Strict):
    kind: Literal["csv"]
    id: str
    path: str = Field(description="CSV with employee_id,metric,value[,evidence]; relative to CWD")


class SqlSource(Strict):
    kind: Literal["sql"]
    id: str
    url: str = Field(description="SQLAlchemy URL; ${VAR} is read from the environment")
    queries: list[str] = Field(
        min_length=1,
        description="each returns employee_id, metric, value, evidence and may use "
        ":period_start and :period_end",
    )


Source = Annotated[CsvSource | SqlSource, Field(discriminator="kind")]


class Calibration(Strict):
    outlier_z: float = Field(default=2.0, gt=0, description="flag totals this many sd from mean")
    cross_checks: list[CrossCheck] = Field(default_factory=list)


class CrossCheck(Strict):
    """Flag e.g. satisfaction >= 95 while complaint rate >= 5 (investigate before approving)."""

    id: str
    if_metric: str
    at_least: float
    and_metric: str
    also_at_least: float
    message: Text


class Improvement(Strict):
    grades: list[str] = Field(description="grades that get an improvement plan")
    months: int = Field(default=3, ge=1, le=12)


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
    notifications: dict[str, Any] = Field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def grade_ids(self) -> list[str]:
        return [g.id for g in self.grades]
