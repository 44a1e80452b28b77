"""The transparency page (/me): an employee's goals, metric values with their evidence, and,
once released, scores and grade with the rater groups' answers.

Privacy rules live here, not in templates: a ratee's view holds rater groups only as aggregates over
at least the policy's anonymity threshold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.connectors.sources import MORE_SUFFIX
from perfcycle.domain.models import (
    Cycle,
    Evaluation,
    MetricValue,
    RaterAssignment,
    RaterType,
    Result,
)
from perfcycle.domain.policy.schema import (
    MetricIndicator,
    Policy,
    RatedIndicator,
    Text,
    VetoIndicator,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.web import i18n
from perfcycle.web.queries.goals import GoalSheet, goal_sheet

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


def rated_item_names(policy: Policy, locale: str) -> dict[str, str]:
    return {
        ind.id: ind.name.get(locale) for ind in policy.indicators if isinstance(ind, RatedIndicator)
    }
