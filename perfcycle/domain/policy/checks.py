"""Cross-field rules of a policy: what the models alone cannot say (weights sum to 100, stage
order, known grades and categories, mail recipients the templates can address, ...).

Each problem names the dotted YAML path; loader.py adds the file and line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence

from perfcycle.core.errors import Problem
from perfcycle.domain.models import RaterType, StageName
from perfcycle.domain.policy.schema import (
    LEVELS,
    EventRule,
    Events,
    EventSwitch,
    MetricIndicator,
    Policy,
    RatedIndicator,
    Reminders,
    SqlSource,
    VetoIndicator,
)
from perfcycle.notifications.events import EVENT_ROLES, PEOPLE_STAGES, TEMPLATES


def check_policy(p: Policy) -> list[Problem]:
    """Every cross-field rule the policy breaks; [] for a usable policy."""
    return [
        *_check_weights(p),
        *_check_unique_ids(p),
        *_check_grades(p),
        *_check_indicators(p),
        *_check_personal_goals(p),
        *_check_raters(p),
        *_check_stages(p),
        *_check_sources(p),
        *_check_notifications(p),
    ]


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


def _check_days_within(p: Policy, stage: StageName, reminders: Reminders, at: str) -> list[Problem]:
    days = p.stage(stage).days
    return [
        Problem(
            f"{d} days before the deadline is before {stage.value} opens (it lasts {days} days)",
            field=f"{at}.days_before.{i}",
        )
        for i, d in enumerate(reminders.days_before)
        if d >= days
    ]
