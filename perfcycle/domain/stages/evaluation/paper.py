"""Paper forms typed into a CSV (one row per item), entered through submit_evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.connectors.csv import CsvRow, read_csv, required_problems
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import Cycle, RaterAssignment, RaterType, StageName
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.stages.evaluation.answers import (
    answer_problems,
    items_with_goals,
    submit_evaluation,
)
from perfcycle.domain.stages.evaluation.states import state_problem
from perfcycle.domain.stages.target_setting import PersonalGoalItem, personal_goal_items

CSV_COLUMNS = ("rater_id", "ratee_id", "rater_type", "item", "score", "comment")
RATER_TYPES = {t.value for t in RaterType}


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
    rows: Sequence[CsvRow], file: str
) -> tuple[dict[tuple[str, str, str], _Form], list[Problem]]:
    forms: dict[tuple[str, str, str], _Form] = {}
    problems: list[Problem] = []
    for row in rows:
        v = row.values
        missing = required_problems(row, CSV_COLUMNS[:5], file)
        problems += missing
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
    refused = state_problem(assignment.state)
    if refused:
        message = f"{rater_id} -> {ratee_id} ({rater_type}): {refused}"
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
