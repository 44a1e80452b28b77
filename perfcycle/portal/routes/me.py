"""The employee's transparency page: own goals, the evidence behind each metric, scores, grade.

Links of kind `results` open /me?cycle=ID. Only the signed-in person's own records are shown;
rater groups appear as aggregates, and only when the policy's anonymity threshold is met.
Agreed personal goals are listed with their terms and, once released, their score; results and
rater groups name them by the goal's title.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from perfcycle import engine
from perfcycle.models import Cycle
from perfcycle.portal import i18n, services
from perfcycle.portal.deps import (
    PageError,
    SessionDep,
    Viewer,
    ViewerDep,
    locale_of,
    render,
)
from perfcycle.portal.routes.goals import load_cycle
from perfcycle.stages.target_setting import PersonalGoalItem, personal_goal_items

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
            "zh-CN": "每个群体至少 {n} 人作答时才显示平均分，绝不显示个人评价。",
            "en": "A group's average is shown only when at least {n} of its raters answered; "
            "individual answers are never shown.",
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
    policy = engine.cycle_policy(cycle)
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
    policy = engine.cycle_policy(cycle)
    found = {c.id: c.name.get(locale) for c in policy.categories}
    found.update({i.id: i.name.get(locale) for i in policy.indicators})
    return found


def goal_titles(goals: list[PersonalGoalItem]) -> dict[str, str]:
    """Personal goals are named by what the employee wrote, not by the policy."""
    return {g.id: g.title for g in goals}


def chosen_cycle(session: Session, request: Request, viewer: Viewer, cycle: int | None) -> Cycle:
    if cycle is not None:
        found = load_cycle(session, request, cycle)
        if not services.is_participant(session, found.id, viewer.person_id):
            message = i18n.translate("me.not_participant", locale_of(request), id=cycle)
            raise PageError(404, "not_found", message)
        return found
    mine = services.cycles_of(session, viewer.person_id)
    if not mine:
        raise PageError(404, "not_found", i18n.translate("me.no_cycles", locale_of(request)))
    return mine[0]


@router.get("/me", response_class=HTMLResponse)
def transparency_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    cycle: int | None = None,
) -> HTMLResponse:
    the_cycle = chosen_cycle(session, request, viewer, cycle)
    locale = locale_of(request)
    view = services.transparency(session, the_cycle, viewer.person_id)
    bars = category_bars(the_cycle, view.result.categories, locale) if view.result else []
    personal = personal_goal_items(session, the_cycle.id, [viewer.person_id]).get(
        viewer.person_id, []
    )
    policy = engine.cycle_policy(the_cycle)
    return render(
        request,
        "me.html",
        {
            "cycle": the_cycle,
            "view": view,
            "bars": bars,
            "chart_width": CHART_WIDTH,
            "bar_height": BAR_HEIGHT,
            "names": {**names(the_cycle, locale), **goal_titles(personal)},
            "item_names": {
                **services.rated_item_names(policy, locale),
                **goal_titles(personal),
            },
            "personal_goals": personal,
            "other_cycles": [
                c for c in services.cycles_of(session, viewer.person_id) if c.id != the_cycle.id
            ],
        },
    )
