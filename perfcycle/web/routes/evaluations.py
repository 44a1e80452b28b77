"""Evaluation: a rater's list of people to rate, and one behaviour-anchored form per person.

Links of kind `evaluation` open /evaluations?cycle=ID. A rater sees only their own assignments
and answers. Submitting goes through perfcycle.domain.stages.evaluation.submit_evaluation; the form
is
re-shown with each problem next to its item (422) when it refuses, and nothing is saved. The
submission that completes the stage resumes the cycle's suspended flow run once committed.

Which items a form has is perfcycle.domain.stages.evaluation.assignment_items: the superior's form
also
rates the attainment of each of the ratee's agreed personal goals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from perfcycle.core.errors import InvalidInput
from perfcycle.domain.deadlines import StageClosed
from perfcycle.domain.models import StageName
from perfcycle.domain.policy.schema import Policy, RatedIndicator
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import (
    FormItemSpec,
    assignment_items,
    load_draft,
    save_draft,
    submit_evaluation,
)
from perfcycle.domain.stages.target_setting import PersonalGoalItem
from perfcycle.web import i18n
from perfcycle.web.deps import (
    CsrfForm,
    PageError,
    SessionDep,
    Viewer,
    ViewerDep,
    locale_of,
    render,
    resume_when_complete,
)
from perfcycle.web.pages import load_cycle, stage_closed, use_up_link
from perfcycle.web.queries.cycles import stage_instance
from perfcycle.web.queries.evaluations import (
    AssignmentRow,
    assignment,
    own_answers,
    rater_assignments,
)

log = logging.getLogger(__name__)
router = APIRouter()

i18n.add_messages(
    {
        "eval.title": {"zh-CN": "评价", "en": "Evaluations"},
        "eval.list_intro": {
            "zh-CN": "请对以下人员进行评价。您的评分对被评价人匿名汇总显示。",
            "en": "Please rate the people below. Ratees see answers only as group aggregates.",
        },
        "eval.none": {
            "zh-CN": "您在本周期没有需要完成的评价。",
            "en": "You have no evaluations in this cycle.",
        },
        "eval.ratee": {"zh-CN": "被评价人", "en": "Person"},
        "eval.as": {"zh-CN": "评价身份", "en": "You rate as"},
        "eval.state": {"zh-CN": "状态", "en": "State"},
        "eval.open": {"zh-CN": "填写", "en": "Open"},
        "eval.view": {"zh-CN": "查看", "en": "View"},
        "eval.form_title": {"zh-CN": "评价：{name}", "en": "Rating {name}"},
        "eval.comment": {"zh-CN": "评语", "en": "Comment"},
        "eval.save_draft": {"zh-CN": "保存草稿", "en": "Save draft"},
        "eval.draft_saved": {
            "zh-CN": "草稿已保存，截止前可随时回来继续填写并提交。",
            "en": "Draft saved: come back any time before the deadline to finish and submit.",
        },
        "eval.comment_required_for": {
            "zh-CN": "选择 {levels} 分时必须填写评语",
            "en": "A comment is required for a score of {levels}",
        },
        "eval.submit": {"zh-CN": "提交评价", "en": "Submit"},
        "eval.submitted_at": {
            "zh-CN": "已于 {when} 提交，仅供查看。",
            "en": "Submitted at {when}; read-only.",
        },
        "eval.expired_note": {
            "zh-CN": "评价窗口已关闭，此评价未提交。",
            "en": "The evaluation window closed before this form was submitted.",
        },
        "eval.fix_errors": {
            "zh-CN": "请修改标出的问题后再提交，尚未保存任何内容。",
            "en": "Please correct the marked items and submit again; nothing was saved yet.",
        },
        "eval.not_yours": {
            "zh-CN": "这份评价不属于您，无法查看。",
            "en": "This evaluation form belongs to another rater.",
        },
        "eval.no_form": {"zh-CN": "找不到评价表 {id}。", "en": "There is no evaluation form {id}."},
        "eval.already_submitted": {
            "zh-CN": "这份评价已经提交，不能再次提交。",
            "en": "This evaluation was already submitted and cannot be submitted again.",
        },
        "eval.goal.attainment.5": {"zh-CN": "远超目标", "en": "Far exceeded the goal"},
        "eval.goal.attainment.4": {"zh-CN": "超出目标", "en": "Exceeded the goal"},
        "eval.goal.attainment.3": {"zh-CN": "达成目标", "en": "Met the goal"},
        "eval.goal.attainment.2": {"zh-CN": "部分达成", "en": "Partly met the goal"},
        "eval.goal.attainment.1": {"zh-CN": "未达成", "en": "Did not meet the goal"},
    }
)

SCORE_LEVELS = (5, 4, 3, 2, 1)


@dataclass(frozen=True)
class Choice:
    level: int
    anchor: str


@dataclass(frozen=True)
class FormItem:
    id: str
    name: str
    choices: list[Choice]
    comment_required_for: list[int]
    score: int | str | None
    comment: str
    errors: list[str]
    # A personal goal's terms as agreed (label, value); empty for the policy's items.
    details: list[tuple[str, str]]
    kind: str = "indicator"


def own_assignment(
    session: Session, request: Request, viewer: Viewer, assignment_id: int
) -> AssignmentRow:
    """The assignment, when it is the viewer's to fill; 404/403 pages otherwise."""
    found = assignment(session, assignment_id)
    locale = locale_of(request)
    if found is None:
        raise PageError(404, "not_found", i18n.translate("eval.no_form", locale, id=assignment_id))
    if found.rater_id != viewer.person_id:
        raise PageError(403, "forbidden", i18n.translate("eval.not_yours", locale))
    return found


def items_of(session: Session, policy: Policy, found: AssignmentRow) -> list[FormItemSpec]:
    return assignment_items(session, policy, found.cycle_id, found.ratee_id, found.rater_type)


def form_items(
    specs: list[FormItemSpec],
    locale: str,
    answers: dict[str, tuple[int | str | None, str]],
    errors: dict[str, list[str]],
) -> list[FormItem]:
    items = []
    for spec in specs:
        score, comment = answers.get(spec.id, (None, ""))
        if isinstance(spec, PersonalGoalItem):
            name, choices, details = spec.title, goal_choices(locale), goal_details(spec, locale)
        else:
            name, choices, details = spec.name.get(locale), anchor_choices(spec, locale), []
        items.append(
            FormItem(
                spec.id,
                name,
                choices,
                sorted(spec.comment_required_for),
                score,
                comment,
                errors.get(spec.id, []),
                details,
                "personal" if isinstance(spec, PersonalGoalItem) else "indicator",
            )
        )
    return items


def anchor_choices(indicator: RatedIndicator, locale: str) -> list[Choice]:
    anchors = indicator.anchors
    return [
        Choice(level, anchors[level].zh_CN if locale == "zh-CN" else anchors[level].en)
        for level in SCORE_LEVELS
        if level in anchors
    ]


def goal_choices(locale: str) -> list[Choice]:
    """The generic attainment scale every personal goal is rated on."""
    return [
        Choice(level, i18n.translate(f"eval.goal.attainment.{level}", locale))
        for level in SCORE_LEVELS
    ]


def goal_details(goal: PersonalGoalItem, locale: str) -> list[tuple[str, str]]:
    return [
        (i18n.translate("goals.field.measure", locale), goal.measure),
        (i18n.translate("goals.field.target", locale), f"{goal.target:g}"),
        (i18n.translate("goals.field.deadline", locale), goal.deadline.isoformat()),
    ]


def parse_answers(form: FormData) -> dict[str, tuple[object, str]]:
    """score.<item> and comment.<item> fields; every submitted score field becomes an answer, so
    a tampered or unknown item is reported by the domain check rather than silently dropped."""
    answers: dict[str, tuple[object, str]] = {}
    for key, value in form.multi_items():
        if not key.startswith("score.") or not isinstance(value, str):
            continue
        item = key.removeprefix("score.")
        comment = form.get(f"comment.{item}", "")
        answers[item] = (_score(value), comment if isinstance(comment, str) else "")
    return answers


def _score(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        return text


@router.get("/evaluations", response_class=HTMLResponse)
def evaluation_list(
    request: Request,
    cycle: int,
    session: SessionDep,
    viewer: ViewerDep,
) -> HTMLResponse:
    the_cycle = load_cycle(session, request, cycle)
    return render(
        request,
        "evaluations.html",
        {
            "cycle": the_cycle,
            "assignments": rater_assignments(session, cycle, viewer.person_id),
            "stage": stage_instance(session, cycle, StageName.evaluation),
        },
    )


def render_form(
    request: Request,
    session: Session,
    found: AssignmentRow,
    answers: dict[str, tuple[int | str | None, str]],
    errors: dict[str, list[str]],
    status_code: int = 200,
) -> HTMLResponse:
    cycle = load_cycle(session, request, found.cycle_id)
    specs = items_of(session, cycle_policy(cycle), found)
    return render(
        request,
        "evaluation_form.html",
        {
            "cycle": cycle,
            "assignment": found,
            "items": form_items(specs, locale_of(request), answers, errors),
            "stage": stage_instance(session, cycle.id, StageName.evaluation),
            "has_errors": bool(errors),
            "general_errors": errors.get("", []),
        },
        status_code=status_code,
    )


@router.get("/evaluations/{assignment_id}", response_class=HTMLResponse)
def evaluation_form(
    request: Request,
    assignment_id: int,
    session: SessionDep,
    viewer: ViewerDep,
) -> HTMLResponse:
    found = own_assignment(session, request, viewer, assignment_id)
    saved = own_answers(session, assignment_id)
    answers: dict[str, tuple[int | str | None, str]] = dict(saved.items())
    if found.state == "pending":
        answers.update(load_draft(session, assignment_id))
    return render_form(request, session, found, answers, {})


@router.post("/evaluations/{assignment_id}", response_model=None)
def submit_form(
    request: Request,
    assignment_id: int,
    session: SessionDep,
    viewer: ViewerDep,
    form: CsrfForm,
) -> Response:
    found = own_assignment(session, request, viewer, assignment_id)
    cycle = load_cycle(session, request, found.cycle_id)
    if found.state == "submitted":
        message = i18n.translate("eval.already_submitted", locale_of(request))
        raise PageError(409, "eval.already_submitted", message)
    policy = cycle_policy(cycle)
    item_ids = [i.id for i in items_of(session, policy, found)]
    answers = parse_answers(form)
    if form.get("action") == "draft":
        return keep_draft(request, session, found, form, answers, item_ids, viewer)
    try:
        # Scores are checked (1..5 integers) by submit_evaluation before anything is written.
        submit_evaluation(session, found.id, answers, viewer.actor, policy)  # type: ignore[arg-type]
    except StageClosed as exc:
        raise stage_closed(request, exc) from exc
    except InvalidInput as exc:
        session.rollback()
        errors = errors_by_item(exc, item_ids, locale_of(request))
        return render_form(request, session, found, shown_answers(answers), errors, 422)
    if not any(
        a.state == "pending"
        for a in rater_assignments(session, cycle.id, viewer.person_id)
    ):
        # The evaluation link lists all of the rater's forms: it is used up with the last one.
        use_up_link(session, request, "evaluation", cycle.id)
    resume_when_complete(request, session, cycle)
    return RedirectResponse(f"/evaluations/{found.id}", status_code=303)


def keep_draft(
    request: Request,
    session: Session,
    found: AssignmentRow,
    form: FormData,
    answers: dict[str, tuple[object, str]],
    item_ids: list[str],
    viewer: Viewer,
) -> Response:
    """Save what is filled in so far; comments typed next to an unscored item are kept too."""
    for item in item_ids:
        comment = form.get(f"comment.{item}", "")
        if item not in answers and isinstance(comment, str) and comment.strip():
            answers[item] = (None, comment)
    policy = cycle_policy(load_cycle(session, request, found.cycle_id))
    try:
        save_draft(session, found.id, answers, viewer.actor, policy)  # type: ignore[arg-type]
    except StageClosed as exc:
        raise stage_closed(request, exc) from exc
    except InvalidInput as exc:
        session.rollback()
        errors = errors_by_item(exc, item_ids, locale_of(request))
        return render_form(request, session, found, shown_answers(answers), errors, 422)
    return RedirectResponse(f"/evaluations/{found.id}?draft=saved", status_code=303)


def shown_answers(
    answers: dict[str, tuple[object, str]],
) -> dict[str, tuple[int | str | None, str]]:
    """What the rater typed, to show again on a refused form."""
    return {i: (a[0] if isinstance(a[0], int | str) else None, a[1]) for i, a in answers.items()}


def errors_by_item(
    exc: InvalidInput, item_ids: list[str], locale: str
) -> dict[str, list[str]]:
    """Each problem next to its item, in the rater's language; others go on top of the form."""
    errors: dict[str, list[str]] = {}
    for problem in exc.problems:
        key = problem.field if problem.field in item_ids else ""
        errors.setdefault(key, []).append(i18n.problem_text(problem, locale))
    return errors
