"""Multi-rater evaluation: who rates whom, the one submit path, send-backs, paper-form import.

Raters are drawn from the whole active organisation, deterministically per (cycle, ratee), so a
re-run computes the same assignments and the unique key turns them into no-ops.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from perfcycle.connectors.csv import read_csv
from perfcycle.core import clock
from perfcycle.core.db import insert_ignore
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access, audit
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import (
    Cycle,
    Employee,
    Evaluation,
    EvaluationDraft,
    Participant,
    RaterAssignment,
    RaterType,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.schema import Policy, RatedIndicator
from perfcycle.domain.stages.base import PendingTask, Progress, StageContext
from perfcycle.domain.stages.target_setting import PersonalGoalItem, personal_goal_items
from perfcycle.notifications.events import Role
from perfcycle.notifications.notify import Recipient, TaskLink, notify

PENDING, SUBMITTED, EXPIRED = "pending", "submitted", "expired"
# The order rater types are drawn in: later types avoid the people earlier types took.
DRAW_ORDER = (
    RaterType.self_,
    RaterType.superior,
    RaterType.peer,
    RaterType.service_recipient,
    RaterType.third_party,
)
SCORES = range(1, 6)
CSV_COLUMNS = ("rater_id", "ratee_id", "rater_type", "item", "score", "comment")
RATER_TYPES = {t.value for t in RaterType}


# ---------------------------------------------------------------- the organisation as pools


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    email: str
    locale: str
    department_id: str
    manager_id: str | None
    active: bool


@dataclass
class DepartmentPool:
    """Employee ids sorted by department, so "in D" and "outside D" are index ranges: O(1) access
    to the i-th candidate without building a list per ratee."""

    ids: list[str]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, people: Sequence[Person]) -> DepartmentPool:
        ordered = sorted(people, key=lambda p: (p.department_id, p.id))
        pool = cls([p.id for p in ordered])
        for i, p in enumerate(ordered):
            start, _ = pool.spans.get(p.department_id, (i, i))
            pool.spans[p.department_id] = (start, i + 1)
        return pool

    def inside(self, department_id: str) -> tuple[int, Callable[[int], str]]:
        start, end = self.spans.get(department_id, (0, 0))
        return end - start, lambda i: self.ids[start + i]

    def outside(self, department_id: str) -> tuple[int, Callable[[int], str]]:
        start, end = self.spans.get(department_id, (0, 0))
        width = end - start
        return len(self.ids) - width, lambda i: self.ids[i if i < start else i + width]


class Ratee(NamedTuple):
    employee_id: str
    department_id: str
    manager_id: str | None


@dataclass
class Organisation:
    people: dict[str, Person]
    everyone: DepartmentPool
    managers: DepartmentPool
    # (manager, department) -> that manager's active reports in that department, sorted.
    teams: dict[tuple[str | None, str], list[str]]


def load_organisation(session: Session) -> Organisation:
    people = {
        r.id: Person(r.id, r.name, r.email, r.locale, r.department_id, r.manager_id, r.active)
        for r in session.execute(
            select(
                Employee.id,
                Employee.name,
                Employee.email,
                Employee.locale,
                Employee.department_id,
                Employee.manager_id,
                Employee.active,
            )
        )
    }
    active = [p for p in people.values() if p.active]
    teams: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for p in sorted(active, key=lambda p: p.id):
        teams[(p.manager_id, p.department_id)].append(p.id)
    manager_ids = {p.manager_id for p in active if p.manager_id is not None}
    managers = [p for p in active if p.id in manager_ids]
    return Organisation(people, DepartmentPool.of(active), DepartmentPool.of(managers), teams)


def _pick(
    rng: random.Random,
    candidates: tuple[int, Callable[[int], str]],
    k: int,
    exclude: set[str],
) -> list[str]:
    """Up to k distinct candidates not in `exclude`, in O(k + |exclude|)."""
    n, at = candidates
    if k <= 0 or n == 0:
        return []
    chosen: list[str] = []
    # Drawing |exclude| extra guarantees k survivors whenever k exist.
    for i in rng.sample(range(n), min(n, k + len(exclude))):
        candidate = at(i)
        if candidate not in exclude:
            chosen.append(candidate)
            if len(chosen) == k:
                break
    return chosen


# ---------------------------------------------------------------- drawing raters


def _draw_for_type(
    org: Organisation,
    rng: random.Random,
    rater_type: RaterType,
    k: int,
    ratee: Ratee,
    taken: set[str],
) -> list[str]:
    """Raters of one type for one ratee, none of them already in `taken`."""
    if rater_type == RaterType.self_:
        person = org.people.get(ratee.employee_id)
        return [ratee.employee_id] if person is not None and person.active else []
    if rater_type == RaterType.superior:
        boss = org.people.get(ratee.manager_id) if ratee.manager_id else None
        return [boss.id] if boss is not None and boss.active and boss.id not in taken else []
    dept = ratee.department_id
    if rater_type == RaterType.peer:
        team = org.teams.get((ratee.manager_id, dept), []) if ratee.manager_id else []
        chosen = _pick(rng, (len(team), team.__getitem__), k, taken)
        return chosen + _pick(rng, org.everyone.inside(dept), k - len(chosen), taken | set(chosen))
    if rater_type == RaterType.service_recipient:
        return _pick(rng, org.everyone.outside(dept), k, taken)
    # third_party: people who manage someone elsewhere know the service best; fill with anyone.
    chosen = _pick(rng, org.managers.outside(dept), k, taken)
    return chosen + _pick(rng, org.everyone.outside(dept), k - len(chosen), taken | set(chosen))


def draw_raters(
    org: Organisation, cycle_id: int, ratee: Ratee, rules: Mapping[RaterType, int]
) -> list[tuple[str, str]]:
    """(rater id, rater type) for one ratee; the same inputs always give the same answer."""
    rng = random.Random(f"{cycle_id}:{ratee.employee_id}")
    taken = {ratee.employee_id}
    raters: list[tuple[str, str]] = []
    for rater_type in DRAW_ORDER:
        if rater_type not in rules:
            continue
        chosen = _draw_for_type(org, rng, rater_type, rules[rater_type], ratee, taken)
        taken.update(chosen)
        raters += [(rater_id, rater_type.value) for rater_id in chosen]
    return raters


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


# ---------------------------------------------------------------- the stage


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
            _table(RaterAssignment),
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


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def _state_counts(session: Session, cycle_id: int) -> dict[str, int]:
    rows = session.execute(
        select(RaterAssignment.state, func.count())
        .where(RaterAssignment.cycle_id == cycle_id)
        .group_by(RaterAssignment.state)
    )
    return {state: count for state, count in rows.tuples()}


# ---------------------------------------------------------------- submitting


def items_for(policy: Policy, rater_type: str) -> list[RatedIndicator]:
    """The policy's rated indicators this rater type scores, in policy order."""
    return [
        ind
        for ind in policy.indicators
        if isinstance(ind, RatedIndicator) and (ind.raters is None or rater_type in ind.raters)
    ]


FormItemSpec = RatedIndicator | PersonalGoalItem


def items_with_goals(
    policy: Policy, rater_type: str, goals: Sequence[PersonalGoalItem]
) -> list[FormItemSpec]:
    """The items of one form: the policy's rated items for the rater type, then, on the
    superior's form only, one per personal goal of the ratee (`goals`)."""
    items: list[FormItemSpec] = list(items_for(policy, rater_type))
    if rater_type == RaterType.superior.value:
        items += goals
    return items


def assignment_items(
    session: Session, policy: Policy, cycle_id: int, ratee_id: str, rater_type: str
) -> list[FormItemSpec]:
    """The items of one assignment's form. The portal form, submit_evaluation, drafts and the
    paper-form import all ask this, so none of them can disagree about a ratee's goals."""
    goals: list[PersonalGoalItem] = []
    if rater_type == RaterType.superior.value:  # the only form that rates goals: spare the query
        goals = personal_goal_items(session, cycle_id, [ratee_id]).get(ratee_id, [])
    return items_with_goals(policy, rater_type, goals)


def _score_problem(score: object) -> str | None:
    if isinstance(score, bool) or not isinstance(score, int) or score not in SCORES:
        return f"score must be an integer from 1 to 5, got {score!r}"
    return None


@dataclass(frozen=True)
class AnswerProblem:
    item: str
    column: str  # where a CSV row would hold it: "item", "score" or "comment"
    message: str
    code: str  # errors.Problem.code: a page words it in the rater's language
    score: object = None

    def problem(self) -> Problem:
        values = (("item", self.item), ("score", self.score))
        return Problem(self.message, field=self.item, code=self.code, values=values)


def answer_problems(
    items: Sequence[FormItemSpec], answers: Mapping[str, tuple[object, str]]
) -> list[AnswerProblem]:
    """Every missing, unknown or invalid answer of one form."""
    known = {i.id: i for i in items}
    problems = [
        AnswerProblem(i.id, "item", f"item {i.id} is not answered", "missing_score")
        for i in items
        if i.id not in answers
    ]
    for item_id, (score, comment) in answers.items():
        item = known.get(item_id)
        if item is None:
            expected = ", ".join(known) or "none"
            problems.append(
                AnswerProblem(
                    item_id,
                    "item",
                    f"{item_id} is not an item for this rater (expected {expected})",
                    "unknown_item",
                )
            )
            continue
        message = _score_problem(score)
        if message:
            problems.append(
                AnswerProblem(item_id, "score", f"{item_id}: {message}", "bad_score", score)
            )
        elif score in item.comment_required_for and not comment.strip():
            problems.append(
                AnswerProblem(
                    item_id,
                    "comment",
                    f"{item_id}: a score of {score} needs a comment",
                    "comment_needed",
                    score,
                )
            )
    return problems


def _state_problem(state: str) -> str | None:
    if state == SUBMITTED:
        return "already submitted"
    if state == EXPIRED:
        return "the evaluation window closed"
    return None


def _upsert_evaluations(session: Session, rows: list[dict[str, Any]]) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_table(Evaluation))
    stmt = stmt.on_conflict_do_update(
        index_elements=["assignment_id", "item"],
        set_={"score": stmt.excluded.score, "comment": stmt.excluded.comment},
    )
    session.execute(stmt, rows)


def submit_evaluation(
    session: Session,
    assignment_id: int,
    answers: Mapping[str, tuple[int, str]],
    actor: Actor,
    policy: Policy,
) -> None:
    """Record one rater's form for one ratee: every item scored 1-5, comments where required."""
    assignment = session.scalars(
        select(RaterAssignment).where(RaterAssignment.id == assignment_id).with_for_update()
    ).one_or_none()
    if assignment is None:
        raise InvalidInput(
            [Problem(f"no evaluation assignment {assignment_id}", field="assignment")]
        )
    accepting_work(session, assignment.cycle_id, StageName.evaluation)
    access.raise_problems(access.refusals(access.evaluation_refusal(actor, assignment)))
    state_problem = _state_problem(assignment.state)
    if state_problem:
        raise InvalidInput([Problem(state_problem, field="assignment")])
    items = assignment_items(
        session, policy, assignment.cycle_id, assignment.ratee_id, assignment.rater_type
    )
    problems = answer_problems(items, answers)
    if problems:
        raise InvalidInput([p.problem() for p in problems])
    _upsert_evaluations(
        session,
        [
            {"assignment_id": assignment.id, "item": item, "score": score, "comment": comment}
            for item, (score, comment) in answers.items()
        ],
    )
    assignment.state = SUBMITTED
    assignment.submitted_at = clock.now()
    session.execute(delete(EvaluationDraft).where(EvaluationDraft.assignment_id == assignment.id))
    audit.record(
        session,
        actor=actor.name,
        action="evaluation.submitted",
        subject=f"assignment:{assignment.id}",
        cycle_id=assignment.cycle_id,
        after={
            "ratee": assignment.ratee_id,
            "rater_type": assignment.rater_type,
            "scores": {item: score for item, (score, _) in answers.items()},
        },
    )


def save_draft(
    session: Session,
    assignment_id: int,
    answers: Mapping[str, tuple[int | None, str]],
    actor: Actor,
    policy: Policy,
) -> None:
    """Keep a rater's partial form. Only the rater, only while pending; scores may be missing."""
    assignment = session.get(RaterAssignment, assignment_id)
    if assignment is None:
        raise InvalidInput([Problem(f"no evaluation assignment {assignment_id}",
                                    field="assignment")])
    accepting_work(session, assignment.cycle_id, StageName.evaluation)
    problems = access.refusals(access.evaluation_refusal(actor, assignment))
    state_problem = _state_problem(assignment.state)
    if state_problem:
        problems.append(Problem(state_problem, field="assignment"))
    items = assignment_items(
        session, policy, assignment.cycle_id, assignment.ratee_id, assignment.rater_type
    )
    known = {i.id for i in items}
    for item, (score, _comment) in answers.items():
        if item not in known:
            problems.append(
                Problem(
                    f"'{item}' is not an item of this form",
                    field=item,
                    code="unknown_item",
                    values=(("item", item),),
                )
            )
        elif score is not None and _score_problem(score):
            problems.append(
                Problem(
                    _score_problem(score) or "",
                    field=item,
                    code="bad_score",
                    values=(("score", score),),
                )
            )
    access.raise_problems(problems)
    stored = {item: {"score": score, "comment": comment}
              for item, (score, comment) in answers.items()}
    draft = session.scalar(select(EvaluationDraft).where(
        EvaluationDraft.assignment_id == assignment_id))
    if draft is None:
        session.add(EvaluationDraft(assignment_id=assignment_id, answers=stored,
                                    saved_at=clock.now()))
    else:
        draft.answers, draft.saved_at = stored, clock.now()
    audit.record(session, actor=actor.name, action="evaluation.draft_saved",
                 subject=f"assignment:{assignment_id}", cycle_id=assignment.cycle_id,
                 after={"items": sorted(stored)})


def load_draft(session: Session, assignment_id: int) -> dict[str, tuple[int | None, str]]:
    draft = session.scalar(select(EvaluationDraft).where(
        EvaluationDraft.assignment_id == assignment_id))
    if draft is None:
        return {}
    return {item: (a.get("score"), a.get("comment", "")) for item, a in draft.answers.items()}


# ---------------------------------------------------------------- calibration send-back


def reopen_evaluations(
    session: Session, cycle_id: int, ratee_ids: Sequence[str], actor: str
) -> int:
    """Send ratees back to their raters: closed assignments become pending in the next round."""
    wanted = sorted(set(ratee_ids))
    if not wanted:
        return 0
    known = set(
        session.scalars(
            select(RaterAssignment.ratee_id)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.ratee_id.in_(wanted))
            .distinct()
        )
    )
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise InvalidInput(
            [
                Problem(f"{r} has no evaluations in cycle {cycle_id}", field="ratee_ids")
                for r in unknown
            ]
        )
    result = session.execute(
        update(RaterAssignment)
        .where(
            RaterAssignment.cycle_id == cycle_id,
            RaterAssignment.ratee_id.in_(wanted),
            RaterAssignment.state.in_([SUBMITTED, EXPIRED]),
        )
        .values(state=PENDING, round=RaterAssignment.round + 1, submitted_at=None)
        .execution_options(synchronize_session=False)
    )
    reopened = max(getattr(result, "rowcount", 0) or 0, 0)
    audit.record(
        session,
        actor=actor,
        action="evaluation.reopened",
        subject=f"cycle:{cycle_id}",
        cycle_id=cycle_id,
        after={"ratees": wanted, "assignments": reopened},
    )
    return reopened


# ---------------------------------------------------------------- paper forms


@dataclass
class _Form:
    """The rows of one paper form: one rater, one ratee, one rater type."""

    line: int
    answers: dict[str, tuple[object, str]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def _parse_score(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return text


def _group_forms(
    rows: Sequence[Any], file: str
) -> tuple[dict[tuple[str, str, str], _Form], list[Problem]]:
    forms: dict[tuple[str, str, str], _Form] = {}
    problems: list[Problem] = []
    for row in rows:
        v = row.values
        missing = [c for c in CSV_COLUMNS[:5] if not v[c]]
        problems += [Problem(f"{c} is required", file, row.line, c) for c in missing]
        if v["rater_type"] and v["rater_type"] not in RATER_TYPES:
            problems.append(
                Problem(
                    f"unknown rater type {v['rater_type']!r}; expected one of "
                    + ", ".join(sorted(RATER_TYPES)),
                    file,
                    row.line,
                    "rater_type",
                )
            )
            continue
        if missing:
            continue
        form = forms.setdefault((v["rater_id"], v["ratee_id"], v["rater_type"]), _Form(row.line))
        if v["item"] in form.lines:
            problems.append(
                Problem(
                    f"duplicate row for item {v['item']} (first on line {form.lines[v['item']]})",
                    file,
                    row.line,
                    "item",
                )
            )
            continue
        form.answers[v["item"]] = (_parse_score(v["score"]), v["comment"])
        form.lines[v["item"]] = row.line
    return forms, problems


def _form_problems(
    form: _Form,
    assignment: RaterAssignment | None,
    key: tuple[str, str, str],
    cycle_id: int,
    policy: Policy,
    goals: Mapping[str, Sequence[PersonalGoalItem]],
    file: str,
) -> list[Problem]:
    rater_id, ratee_id, rater_type = key
    if assignment is None:
        return [
            Problem(
                f"{rater_id} has no {rater_type} evaluation of {ratee_id} in cycle {cycle_id}",
                file,
                form.line,
                "rater_id",
            )
        ]
    state_problem = _state_problem(assignment.state)
    if state_problem:
        message = f"{rater_id} -> {ratee_id} ({rater_type}): {state_problem}"
        return [Problem(message, file, form.line, "rater_id")]
    return [
        # A missing item has no row of its own: point at the form's first row.
        Problem(p.message, file, form.lines.get(p.item, form.line), p.column)
        for p in answer_problems(
            items_with_goals(policy, rater_type, goals.get(ratee_id, [])), form.answers
        )
    ]


def import_evaluations_csv(
    session: Session, cycle_id: int, path: Path, policy: Policy, actor: Actor
) -> int:
    """Enter paper forms (one row per item) through submit_evaluation; all forms or none.

    Like the portal's forms, only while the evaluation stage accepts work."""
    file = str(path)
    if session.get(Cycle, cycle_id) is None:
        raise InvalidInput([Problem(f"no cycle {cycle_id}", field="cycle")])
    accepting_work(session, cycle_id, StageName.evaluation)
    rows, problems = read_csv(path, CSV_COLUMNS)
    if not rows and not problems:
        problems.append(Problem("no evaluations in the file", file, 2))
    forms, group_problems = _group_forms(rows, file)
    problems += group_problems
    assignments = {
        (a.rater_id, a.ratee_id, a.rater_type): a
        for a in session.scalars(
            select(RaterAssignment).where(RaterAssignment.cycle_id == cycle_id)
        )
    }
    # One query for every ratee's personal goals, not one per paper form.
    goals = personal_goal_items(session, cycle_id)
    for key, form in forms.items():
        problems += _form_problems(form, assignments.get(key), key, cycle_id, policy, goals, file)
    if problems:
        raise InvalidInput(sorted(problems, key=lambda p: p.line or 0))
    for key, form in forms.items():
        # Validated above: every score is an int.
        answers = {item: (cast(int, score), text) for item, (score, text) in form.answers.items()}
        submit_evaluation(session, assignments[key].id, answers, actor, policy)
    return len(forms)
