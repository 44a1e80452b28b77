"""The employee's transparency page: own goals, the evidence behind each metric, scores, grade.

Links of kind `results` open /me?cycle=ID: the signed-in person's own records. Rater groups
appear as aggregates, and only when the policy's anonymity threshold is met (the ratee's own
self-assessment always). Agreed personal
goals are listed with their terms and, once released, their score; results and rater groups name
them by the goal's title.

/me?cycle=ID&employee=EID is EID's page as EID sees it, read-only, for those
perfcycle.domain.access.viewing_capacity admits (their manager in that cycle, HR admins,
auditors); anyone else gets a 403 page naming nobody. It is built from the same read model as
the person's own page, so it can never show more than they see.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from perfcycle.domain.access import Capacity, viewing_capacity
from perfcycle.domain.models import Cycle
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.target_setting import PersonalGoalItem, personal_goal_items
from perfcycle.web import i18n
from perfcycle.web.deps import (
    PageError,
    SessionDep,
    Viewer,
    ViewerDep,
    locale_of,
    render,
)
from perfcycle.web.pages import load_cycle
from perfcycle.web.queries.cycles import cycles_of, is_participant
from perfcycle.web.queries.transparency import (
    EVIDENCE_LABEL,
    SOURCE_LABEL,
    rated_item_names,
    transparency,
)

router = APIRouter()

i18n.add_messages(
    {
        "me.title": {"zh-CN": "我的考核结果", "en": "My review"},
        "me.no_cycles": {
            "zh-CN": "您还没有参加任何考核周期。",
            "en": "You have not taken part in any review cycle yet.",
        },
        "me.not_participant": {
            "zh-CN": "您没有参加考核周期 {id}。",
            "en": "You do not take part in cycle {id}.",
        },
        "me.cycles": {"zh-CN": "其他周期", "en": "Other cycles"},
        "me.goals": {"zh-CN": "我的目标", "en": "My goals"},
        "me.metrics": {"zh-CN": "指标数据与依据", "en": "Metrics and their evidence"},
        "me.no_metrics": {"zh-CN": "尚未采集指标数据。", "en": "No metric values collected yet."},
        "me.metric": {"zh-CN": "指标", "en": "Metric"},
        "me.value": {"zh-CN": "数值", "en": "Value"},
        "me.source": {"zh-CN": "来源", "en": "Source"},
        "me.evidence": {"zh-CN": "依据", "en": "Evidence"},
        "me.scores": {"zh-CN": "得分", "en": "Scores"},
        "me.not_released": {
            "zh-CN": "考核结果尚未发布。校准完成后，这里会显示您的得分和等级。",
            "en": "Your results are not released yet. Scores and grade appear here after "
            "calibration.",
        },
        "me.category": {"zh-CN": "类别", "en": "Category"},
        "me.indicator": {"zh-CN": "考核项", "en": "Indicator"},
        "me.score": {"zh-CN": "得分", "en": "Score"},
        "me.total": {"zh-CN": "总分：{total}", "en": "Total: {total}"},
        "me.grade": {"zh-CN": "等级：{grade}", "en": "Grade: {grade}"},
        "me.released_at": {"zh-CN": "发布于 {when}", "en": "Released at {when}"},
        "me.chart": {"zh-CN": "各类别得分", "en": "Category scores"},
        "me.raters": {
            "zh-CN": "评价人群体（匿名汇总）",
            "en": "Rater groups (anonymous aggregates)",
        },
        "me.raters_intro": {
            "zh-CN": "每个群体至少 {n} 人作答时才显示平均分，绝不显示个人评价；自评始终显示。",
            "en": "A group's average is shown only when at least {n} of its raters answered; "
            "individual answers are never shown. The self-assessment is always shown.",
        },
        "me.answered": {"zh-CN": "{n} 人作答", "en": "{n} answered"},
        "me.too_few": {
            "zh-CN": "作答人数不足，不予显示",
            "en": "not enough responses to show",
        },
        "me.mean": {"zh-CN": "平均分（1–5）", "en": "Mean (1–5)"},
        "me.no_raters": {"zh-CN": "没有评价数据。", "en": "No evaluations."},
        "me.personal": {"zh-CN": "我的个人目标", "en": "My personal goals"},
        "me.personal_intro": {
            "zh-CN": "上级按 1–5 分评价每个个人目标的达成情况，得分 = 评分 × 20。",
            "en": "Your superior rates how far each goal was attained (1–5); the score is "
            "the rating times 20.",
        },
        # Someone else's page (?employee=): the same sections, worded about that person.
        "me.other.title": {"zh-CN": "{name}的考核结果", "en": "Review of {name}"},
        "me.other.goals": {"zh-CN": "目标", "en": "Goals"},
        "me.other.personal": {"zh-CN": "个人目标", "en": "Personal goals"},
        "me.other.personal_intro": {
            "zh-CN": "上级按 1–5 分评价每个个人目标的达成情况，得分 = 评分 × 20。",
            "en": "The superior rates how far each goal was attained (1–5); the score is "
            "the rating times 20.",
        },
        "me.other.not_released": {
            "zh-CN": "考核结果尚未发布。校准完成后，这里会显示得分和等级。",
            "en": "The results are not released yet. Scores and grade appear here after "
            "calibration.",
        },
        "me.viewing.manager": {
            "zh-CN": "这是{name}（{id}）的考核页面，您以其经理的身份查看，内容与本人所见相同。"
            "本页只读。",
            "en": "This is the review page of {name} ({id}), exactly as they see it. You see it "
            "as their manager; it is read-only.",
        },
        "me.viewing.hr": {
            "zh-CN": "这是{name}（{id}）的考核页面，您以人力资源管理员的身份查看，内容与本人所见"
            "相同。本页只读。",
            "en": "This is the review page of {name} ({id}), exactly as they see it. You see it "
            "as HR; it is read-only.",
        },
        "me.viewing.auditor": {
            "zh-CN": "这是{name}（{id}）的考核页面，您以审计员的身份查看，内容与本人所见相同。"
            "本页只读。",
            "en": "This is the review page of {name} ({id}), exactly as they see it. You see it "
            "as an auditor; it is read-only.",
        },
        "me.forbidden": {
            "zh-CN": "您无权查看此页面：他人的考核页面只对其本周期的经理、人力资源管理员和"
            "审计员开放。",
            "en": "You may not see this page: someone else's review page is open only to their "
            "manager in that cycle, HR and auditors.",
        },
        "me.other_not_participant": {
            "zh-CN": "{employee} 没有参加考核周期 {id}。",
            "en": "{employee} does not take part in cycle {id}.",
        },
    }
)

# Words for the metric evidence the shipped policies' sources write (policies/*.yaml `sources:`,
# perfcycle/connectors/sources.py). A key without words here is shown as it is.
EVIDENCE_LABELS: dict[str, dict[str, str]] = {
    # counts
    "tickets": {"zh-CN": "工单数", "en": "Tickets"},
    "surveys": {"zh-CN": "满意度回访数", "en": "Survey answers"},
    "satisfied": {"zh-CN": "满意（4–5 分）", "en": "Satisfied (4–5)"},
    "answered": {"zh-CN": "已首次响应", "en": "Answered"},
    "resolved": {"zh-CN": "已解决", "en": "Resolved"},
    "reopened": {"zh-CN": "被重新打开", "en": "Reopened"},
    "within_sla": {"zh-CN": "按时解决", "en": "Resolved within SLA"},
    "complaints": {"zh-CN": "投诉", "en": "Complaints"},
    "handled_in_24h": {"zh-CN": "24 小时内处理的投诉", "en": "Complaints handled within 24 h"},
    "major_incidents": {"zh-CN": "重大事故", "en": "Major incidents"},
    # single records
    "first": {"zh-CN": "第一张工单", "en": "First ticket"},
    "last": {"zh-CN": "最后一张工单", "en": "Last ticket"},
    "first_complaint": {"zh-CN": "第一起投诉", "en": "First complaint"},
    "last_complaint": {"zh-CN": "最后一起投诉", "en": "Last complaint"},
    "first_incident": {"zh-CN": "第一起重大事故", "en": "First major incident"},
    "last_incident": {"zh-CN": "最后一起重大事故", "en": "Last major incident"},
    # the tickets that counted against the employee
    "dissatisfied_tickets": {"zh-CN": "不满意（1–3 分）的工单", "en": "Tickets rated 1–3"},
    "not_first_contact_tickets": {
        "zh-CN": "未一次解决的工单（未解决或被重新打开）",
        "en": "Tickets not resolved at first contact (unresolved or reopened)",
    },
    "complaint_tickets": {"zh-CN": "投诉工单", "en": "Complaint tickets"},
    "late_complaint_tickets": {
        "zh-CN": "未在 24 小时内处理的投诉",
        "en": "Complaints not handled within 24 h",
    },
    "missed_sla_tickets": {
        "zh-CN": "未按时解决的工单",
        "en": "Tickets not resolved within the SLA",
    },
    "reopened_tickets": {"zh-CN": "被重新打开的工单", "en": "Reopened tickets"},
    "incident_tickets": {"zh-CN": "重大事故工单", "en": "Major incident tickets"},
    "slowest_tickets": {"zh-CN": "耗时最长的工单", "en": "Slowest tickets"},
    # supplied by file (HR import, csv sources)
    "file": {"zh-CN": "文件", "en": "File"},
    "line": {"zh-CN": "行号", "en": "Line"},
    "supplied_by": {"zh-CN": "提供人", "en": "Supplied by"},
    "basis": {"zh-CN": "依据说明", "en": "Basis"},
}

i18n.add_messages(
    {
        **{EVIDENCE_LABEL.format(k): v for k, v in EVIDENCE_LABELS.items()},
        SOURCE_LABEL.format("tickets"): {"zh-CN": "工单系统", "en": "Ticket system"},
        SOURCE_LABEL.format("hr_import"): {
            "zh-CN": "人力资源部补录",
            "en": "Supplied by HR",
        },
        "me.source_named": {"zh-CN": "{name}（{id}）", "en": "{name} ({id})"},
        "me.source_query": {"zh-CN": "第 {n} 条查询", "en": "query {n}"},
        "me.period_label": {"zh-CN": "统计期间", "en": "Period"},
        "me.period": {"zh-CN": "{start} 至 {end}", "en": "{start} to {end}"},
        "me.rule": {"zh-CN": "计算规则：{rule}", "en": "Rule: {rule}"},
        "me.more": {"zh-CN": "另有 {n} 张", "en": "and {n} more"},
        "me.none": {"zh-CN": "：无", "en": ": none"},
        "me.overrides": {
            "zh-CN": "替代了{source}的数值 {value}",
            "en": "Replaces the value {value} from {source}",
        },
    }
)

CHART_WIDTH = 300
BAR_HEIGHT = 22


@dataclass(frozen=True)
class Bar:
    label: str
    score: float
    y: int
    width: float


def category_bars(cycle: Cycle, categories: dict[str, object], locale: str) -> list[Bar]:
    """Bars of 0..100 scores for the inline SVG chart, in policy order."""
    policy = cycle_policy(cycle)
    bars = []
    for i, category in enumerate(c for c in policy.categories if c.id in categories):
        value = categories[category.id]
        score = float(value) if isinstance(value, int | float) else 0.0
        clamped = min(max(score, 0.0), 100.0)
        bars.append(
            Bar(category.name.get(locale), score, i * (BAR_HEIGHT + 6), CHART_WIDTH * clamped / 100)
        )
    return bars


def names(cycle: Cycle, locale: str) -> dict[str, str]:
    policy = cycle_policy(cycle)
    found = {c.id: c.name.get(locale) for c in policy.categories}
    found.update({i.id: i.name.get(locale) for i in policy.indicators})
    return found


def goal_titles(goals: list[PersonalGoalItem]) -> dict[str, str]:
    """Personal goals are named by what the employee wrote, not by the policy."""
    return {g.id: g.title for g in goals}


def chosen_cycle(session: Session, request: Request, viewer: Viewer, cycle: int | None) -> Cycle:
    if cycle is not None:
        found = load_cycle(session, request, cycle)
        if not is_participant(session, found.id, viewer.person_id):
            message = i18n.translate("me.not_participant", locale_of(request), id=cycle)
            raise PageError(404, "not_found", message)
        return found
    mine = cycles_of(session, viewer.person_id)
    if not mine:
        raise PageError(404, "not_found", i18n.translate("me.no_cycles", locale_of(request)))
    return mine[0]


def capacity_of(
    session: Session, viewer: Viewer, cycle_id: int, employee_id: str
) -> Capacity | None:
    return viewing_capacity(session, viewer.actor, cycle_id, employee_id)


def forbidden(request: Request) -> PageError:
    # Says nothing about the person asked for: not even whether they exist or take part.
    return PageError(403, "forbidden", i18n.translate("me.forbidden", locale_of(request)))


def others_cycle(
    session: Session, request: Request, viewer: Viewer, employee_id: str, cycle: int | None
) -> tuple[Cycle, Capacity]:
    """The cycle of `employee_id`'s page to show and the capacity the viewer reads it in.

    The right to see comes first, so a refused viewer learns nothing about the person. Without
    `cycle`: the person's newest cycle the viewer may see.
    """
    if cycle is None:
        for theirs in cycles_of(session, employee_id):
            capacity = capacity_of(session, viewer, theirs.id, employee_id)
            if capacity is not None:
                return theirs, capacity
        raise forbidden(request)
    found = load_cycle(session, request, cycle)
    capacity = capacity_of(session, viewer, found.id, employee_id)
    if capacity is None:
        raise forbidden(request)
    if not is_participant(session, found.id, employee_id):
        message = i18n.translate(
            "me.other_not_participant", locale_of(request), employee=employee_id, id=cycle
        )
        raise PageError(404, "not_found", message)
    return found, capacity


@router.get("/me", response_class=HTMLResponse)
def transparency_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    cycle: int | None = None,
    employee: str = "",
) -> HTMLResponse:
    subject = employee.strip() or viewer.person_id
    capacity: Capacity
    if subject == viewer.person_id:
        the_cycle, capacity = chosen_cycle(session, request, viewer, cycle), "self"
    else:
        the_cycle, capacity = others_cycle(session, request, viewer, subject, cycle)
    locale = locale_of(request)
    view = transparency(session, the_cycle, subject)
    bars = category_bars(the_cycle, view.result.categories, locale) if view.result else []
    personal = personal_goal_items(session, the_cycle.id, [subject]).get(subject, [])
    policy = cycle_policy(the_cycle)
    return render(
        request,
        "me.html",
        {
            "cycle": the_cycle,
            "view": view,
            "own": capacity == "self",
            "capacity": capacity,
            "bars": bars,
            "chart_width": CHART_WIDTH,
            "bar_height": BAR_HEIGHT,
            "names": {**names(the_cycle, locale), **goal_titles(personal)},
            "item_names": {
                **rated_item_names(policy, locale),
                **goal_titles(personal),
            },
            "personal_goals": personal,
            # Only cycles whose page of this person the viewer may open.
            "other_cycles": [
                c
                for c in cycles_of(session, subject)
                if c.id != the_cycle.id and capacity_of(session, viewer, c.id, subject)
            ],
        },
    )
