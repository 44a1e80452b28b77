"""The one submit path for a rater's form, and the drafts of a form not yet submitted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import upsert
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access, audit
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_work
from perfcycle.domain.models import (
    Evaluation,
    EvaluationDraft,
    RaterAssignment,
    RaterType,
    StageName,
)
from perfcycle.domain.policy.schema import Policy, RatedIndicator
from perfcycle.domain.stages.evaluation.states import SUBMITTED, state_problem, table
from perfcycle.domain.stages.target_setting import PersonalGoalItem, personal_goal_items

SCORES = range(1, 6)


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
    items: Sequence[FormItemSpec],
    answers: Mapping[str, tuple[object, str]],
    *,
    draft: bool = False,
) -> list[AnswerProblem]:
    """Every missing, unknown or invalid answer of one form. A `draft` may leave items out or
    unscored and comments unwritten; what it does answer must still fit the form."""
    known = {i.id: i for i in items}
    problems = [
        AnswerProblem(i.id, "item", f"item {i.id} is not answered", "missing_score")
        for i in items
        if i.id not in answers and not draft
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
        if draft and score is None:
            continue
        message = _score_problem(score)
        if message:
            problems.append(
                AnswerProblem(item_id, "score", f"{item_id}: {message}", "bad_score", score)
            )
        elif score in item.comment_required_for and not comment.strip() and not draft:
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


def _assignment(session: Session, assignment_id: int, *, lock: bool) -> RaterAssignment:
    query = select(RaterAssignment).where(RaterAssignment.id == assignment_id)
    assignment = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if assignment is None:
        raise InvalidInput(
            [Problem(f"no evaluation assignment {assignment_id}", field="assignment")]
        )
    return assignment


def submit_evaluation(
    session: Session,
    assignment_id: int,
    answers: Mapping[str, tuple[int, str]],
    actor: Actor,
    policy: Policy,
) -> None:
    """Record one rater's form for one ratee: every item scored 1-5, comments where required."""
    # Locked: two submits of one form must not both see it pending.
    assignment = _assignment(session, assignment_id, lock=True)
    accepting_work(session, assignment.cycle_id, StageName.evaluation)
    access.raise_problems(access.refusals(access.evaluation_refusal(actor, assignment)))
    refused = state_problem(assignment.state)
    if refused:
        raise InvalidInput([Problem(refused, field="assignment")])
    items = assignment_items(
        session, policy, assignment.cycle_id, assignment.ratee_id, assignment.rater_type
    )
    problems = answer_problems(items, answers)
    if problems:
        raise InvalidInput([p.problem() for p in problems])
    upsert(
        session,
        table(Evaluation),
        [
            {"assignment_id": assignment.id, "item": item, "score": score, "comment": comment}
            for item, (score, comment) in answers.items()
        ],
        key=("assignment_id", "item"),
        update=("score", "comment"),
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
    assignment = _assignment(session, assignment_id, lock=False)
    accepting_work(session, assignment.cycle_id, StageName.evaluation)
    problems = access.refusals(access.evaluation_refusal(actor, assignment))
    refused = state_problem(assignment.state)
    if refused:
        problems.append(Problem(refused, field="assignment"))
    items = assignment_items(
        session, policy, assignment.cycle_id, assignment.ratee_id, assignment.rater_type
    )
    problems += [p.problem() for p in answer_problems(items, answers, draft=True)]
    access.raise_problems(problems)
    stored = {
        item: {"score": score, "comment": comment} for item, (score, comment) in answers.items()
    }
    draft = session.scalar(
        select(EvaluationDraft).where(EvaluationDraft.assignment_id == assignment_id)
    )
    if draft is None:
        session.add(
            EvaluationDraft(assignment_id=assignment_id, answers=stored, saved_at=clock.now())
        )
    else:
        draft.answers, draft.saved_at = stored, clock.now()
    audit.record(
        session,
        actor=actor.name,
        action="evaluation.draft_saved",
        subject=f"assignment:{assignment_id}",
        cycle_id=assignment.cycle_id,
        after={"items": sorted(stored)},
    )


def load_draft(session: Session, assignment_id: int) -> dict[str, tuple[int | None, str]]:
    draft = session.scalar(
        select(EvaluationDraft).where(EvaluationDraft.assignment_id == assignment_id)
    )
    if draft is None:
        return {}
    return {item: (a.get("score"), a.get("comment", "")) for item, a in draft.answers.items()}
