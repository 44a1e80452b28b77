"""Goal setting: the employee reviews and signs their goals; the manager approves or returns them.

Links: `goals` (the employee's sheet) and `goals_approval` (a manager's digest) both open
/goals?cycle=ID. Signing goes through perfcycle.domain.stages.target_setting, which refuses work
the stage no longer accepts (perfcycle.domain.deadlines) and anyone but the approver
(perfcycle.domain.access); this module says why in the reader's language.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import access
from perfcycle.domain.deadlines import StageClosed, accepts_work
from perfcycle.domain.models import Cycle, StageName
from perfcycle.domain.policy.snapshot import cycle_policy, cycle_policy_or_none
from perfcycle.domain.stages.target_setting import (
    PERSONAL_FIELDS,
    approve_goals,
    last_return,
    return_goals,
    save_personal_goals,
    set_target,
    submit_goals,
)
from perfcycle.web import i18n
from perfcycle.web.deps import (
    CsrfForm,
    PageError,
    SessionDep,
    ViewerDep,
    locale_of,
    render,
    resume_when_complete,
)
from perfcycle.web.pages import form_int, form_text, invalid, load_cycle, stage_closed, use_up_link
from perfcycle.web.queries.cycles import names_of, stage_instance
from perfcycle.web.queries.goals import goal_sheet, sheets_to_review

router = APIRouter()

i18n.add_messages(
    {
        "goals.title": {"zh-CN": "绩效目标", "en": "Goals"},
        "goals.mine": {"zh-CN": "我的目标", "en": "My goals"},
        "goals.team": {"zh-CN": "团队目标审批", "en": "Your team's goals"},
        "goals.standing_in": {
            "zh-CN": "无直属经理人员的目标（由人力资源审批）",
            "en": "Goals of people without a manager (HR approves)",
        },
        "goals.none": {"zh-CN": "您在本周期没有目标。", "en": "You have no goals in this cycle."},
        "goals.indicator": {"zh-CN": "指标", "en": "Indicator"},
        "goals.category": {"zh-CN": "类别", "en": "Category"},
        "goals.target": {"zh-CN": "目标值", "en": "Target"},
        "goals.weight": {"zh-CN": "权重", "en": "Weight"},
        "goals.locked": {"zh-CN": "锁定（政策规定）", "en": "locked (set by the policy)"},
        "goals.total_weight": {"zh-CN": "权重合计：{total}%", "en": "Total weight: {total}%"},
        "goals.signed_employee": {
            "zh-CN": "员工签署：{when}",
            "en": "Signed by the employee: {when}",
        },
        "goals.signed_manager": {
            "zh-CN": "经理签署：{when}",
            "en": "Signed by the manager: {when}",
        },
        "goals.not_signed": {"zh-CN": "未签署", "en": "not signed"},
        "goals.submit": {"zh-CN": "确认并提交给经理", "en": "Sign and send to my manager"},
        "goals.approve": {"zh-CN": "批准", "en": "Approve"},
        "goals.return": {"zh-CN": "退回修改", "en": "Return"},
        "goals.return_comment": {"zh-CN": "退回原因（必填）", "en": "Why (required)"},
        "goals.no_team": {
            "zh-CN": "本周期没有需要您审批的下属目标。",
            "en": "None of your reports take part in this cycle.",
        },
        "goals.saved": {"zh-CN": "已保存。", "en": "Saved."},
        "goals.returned_by": {
            "zh-CN": "{manager} 于 {when} 退回了您的目标，原因：",
            "en": "{manager} returned your goals on {when}, saying:",
        },
        "goals.personal": {"zh-CN": "个人目标", "en": "Personal goal"},
        "goals.personal_title": {
            "zh-CN": "我的个人目标（SMART）",
            "en": "My personal goals (SMART)",
        },
        "goals.personal_intro": {
            "zh-CN": "最多 {max} 个，计入“{category}”类别；权重合计必须为 {weight}%。"
            "目标应具体、可衡量、可实现、相关并有期限。留空的行不会保存。",
            "en": "Up to {max}, scored in {category}; their weights must add up to {weight}%. "
            "Make each specific, measurable, achievable, relevant and time-bound. Blank rows "
            "are not saved.",
        },
        "goals.personal_min": {
            "zh-CN": "提交前至少需要 {min} 个个人目标。",
            "en": "At least {min} personal goals are needed before you sign.",
        },
        "goals.field.title": {"zh-CN": "目标（做什么）", "en": "Goal (what)"},
        "goals.field.measure": {"zh-CN": "衡量方式", "en": "Measure"},
        "goals.field.target": {"zh-CN": "目标值", "en": "Target"},
        "goals.field.deadline": {"zh-CN": "完成期限", "en": "Deadline"},
        "goals.field.weight": {"zh-CN": "权重 %", "en": "Weight %"},
        "goals.my_target": {"zh-CN": "我的目标值", "en": "My target"},
        "goals.save_changes": {"zh-CN": "保存修改", "en": "Save changes"},
        "goals.fix_errors": {
            "zh-CN": "请修改标出的问题，尚未保存任何内容。",
            "en": "Please correct the marked fields; nothing was saved yet.",
        },
        "goals.edit_then_sign": {
            "zh-CN": "修改保存后再确认提交；提交后只有经理退回才能再修改。",
            "en": "Save your changes, then sign. After signing, only a return by your manager "
            "reopens the sheet.",
        },
    }
)


@router.get("/goals", response_class=HTMLResponse)
def goals_page(
    request: Request,
    cycle: int,
    session: SessionDep,
    viewer: ViewerDep,
) -> HTMLResponse:
    the_cycle = load_cycle(session, request, cycle)
    return render_goals(
        request,
        session,
        the_cycle,
        viewer.actor,
        Edits.saved_on(session, the_cycle.id, viewer.person_id),
    )


@dataclass
class Edits:
    """What the employee's edit form shows: saved values, or what they typed when refused."""

    personal: list[dict[str, str]]
    targets: dict[str, str]
    errors: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def saved_on(cls, session: Session, cycle_id: int, employee_id: str) -> Edits:
        sheet = goal_sheet(session, cycle_id, employee_id)
        personal = [
            {
                "title": g.title,
                "measure": g.measure or "",
                "target": _num(g.target),
                "deadline": g.deadline.isoformat() if g.deadline else "",
                "weight": _num(g.weight),
            }
            for g in sheet.personal
        ]
        targets = {g.indicator_id: _num(g.target) for g in sheet.goals if not g.locked}
        return cls(personal, targets)

    @classmethod
    def typed_in(cls, form: FormData, rows: int) -> Edits:
        personal = [
            {f: form_text(form, f"personal.{n}.{f}") for f in PERSONAL_FIELDS}
            for n in range(1, rows + 1)
        ]
        targets = {
            key.removeprefix("target."): value
            for key, value in form.multi_items()
            if key.startswith("target.") and isinstance(value, str)
        }
        return cls(personal, targets)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def render_goals(
    request: Request,
    session: Session,
    cycle: Cycle,
    actor: access.Actor,
    edits: Edits,
    status_code: int = 200,
) -> HTMLResponse:
    person_id = actor.person_id or ""
    stage = stage_instance(session, cycle.id, StageName.target_setting)
    accepting = accepts_work(stage, clock.now())
    policy = cycle_policy_or_none(cycle)
    share = policy.personal_goals if policy else None
    locale = locale_of(request)
    category_names = {c.id: c.name.get(locale) for c in policy.categories} if policy else {}
    # The sheet keeps the titles as signed; the page names the policy's indicators in the
    # reader's language.
    indicator_names = {i.id: i.name.get(locale) for i in policy.indicators} if policy else {}
    category = category_names.get(share.category or "", "") if share and share.max else ""
    # Blank rows up to the policy's maximum, so adding a goal needs no script.
    rows = edits.personal + [dict.fromkeys(PERSONAL_FIELDS, "")] * (
        (share.max if share else 0) - len(edits.personal)
    )
    returned = last_return(session, cycle.id, person_id)
    reviewed = sheets_to_review(session, cycle.id, actor)
    return render(
        request,
        "goals.html",
        {
            "cycle": cycle,
            "mine": goal_sheet(session, cycle.id, person_id),
            "returned": returned,
            "category_names": category_names,
            "indicator_names": indicator_names,
            "returned_by": names_of(session, {returned.by}).get(returned.by, returned.by)
            if returned
            else "",
            "team": [s for s, as_hr in reviewed if not as_hr],
            # HR stands in for the manager of those who have none.
            "standing_in": [s for s, as_hr in reviewed if as_hr],
            "stage": stage,
            "accepting": accepting,
            "saved": request.query_params.get("saved") == "1",
            "share": share,
            "share_category": category,
            "rows": rows,
            "targets": edits.targets,
            "errors": edits.errors,
        },
        status_code=status_code,
    )


@router.post("/goals/edit", response_model=None)
def edit(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    form: CsrfForm,
) -> Response:
    """Save the employee's own targets (unlocked indicators) and personal goals, all or nothing."""
    cycle = load_cycle(session, request, form_int(form, "cycle"))
    share = cycle_policy(cycle).personal_goals
    edits = Edits.typed_in(form, share.max)
    sheet = goal_sheet(session, cycle.id, viewer.person_id)
    problems: list[Problem] = []
    for indicator_id, typed in edits.targets.items():
        saved = next((g for g in sheet.goals if g.indicator_id == indicator_id), None)
        if saved is not None and typed.strip() == _num(saved.target):
            continue  # unchanged: no audit event for a target nobody touched
        try:
            set_target(session, cycle.id, viewer.person_id, indicator_id, typed, actor=viewer.actor)
        except StageClosed as exc:
            raise stage_closed(request, exc) from exc
        except InvalidInput as exc:
            problems.extend(exc.problems)
    if share.max:
        try:
            save_personal_goals(
                session, cycle.id, viewer.person_id, edits.personal, actor=viewer.actor
            )
        except StageClosed as exc:
            raise stage_closed(request, exc) from exc
        except InvalidInput as exc:
            problems.extend(exc.problems)
    if problems:
        session.rollback()
        for problem in problems:
            text = i18n.problem_text(problem, locale_of(request))
            edits.errors.setdefault(problem.field or "", []).append(text)
        return render_goals(request, session, cycle, viewer.actor, edits, status_code=422)
    return RedirectResponse(f"/goals?cycle={cycle.id}&saved=1", status_code=303)


@router.post("/goals/submit")
def submit(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    form: CsrfForm,
) -> Response:
    cycle = load_cycle(session, request, form_int(form, "cycle"))
    try:
        submit_goals(session, cycle.id, viewer.person_id, actor=viewer.actor)
    except InvalidInput as exc:
        raise invalid(request, exc) from exc
    use_up_link(session, request, "goals", cycle.id)
    return RedirectResponse(f"/goals?cycle={cycle.id}&saved=1", status_code=303)


@router.post("/goals/review")
def review(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    form: CsrfForm,
) -> Response:
    """The manager approves (decision=approve) or returns (decision=return, comment) one sheet;
    HR does so for someone without a manager."""
    cycle = load_cycle(session, request, form_int(form, "cycle"))
    employee_id = form_text(form, "employee")
    decision = form_text(form, "decision")
    if decision not in ("approve", "return"):
        raise PageError(400, "bad_form", f"decision: expected approve or return, got {decision!r}")
    try:
        if decision == "approve":
            approve_goals(session, cycle.id, employee_id, actor=viewer.actor)
        else:
            comment = form_text(form, "comment")
            return_goals(session, cycle.id, employee_id, comment=comment, actor=viewer.actor)
    except InvalidInput as exc:
        raise invalid(request, exc) from exc
    # The approval link lists the whole team: it is used up when nothing is left to review.
    waiting = [
        s
        for s, _ in sheets_to_review(session, cycle.id, viewer.actor)
        if s.state == "submitted"
    ]
    if not waiting:
        use_up_link(session, request, "goals_approval", cycle.id)
    if decision == "approve":
        resume_when_complete(request, session, cycle)
    return RedirectResponse(f"/goals?cycle={cycle.id}&saved=1", status_code=303)
