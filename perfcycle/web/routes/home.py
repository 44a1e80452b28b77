"""The home page `/`: the signed-in person's open tasks across running cycles, and where to go.

Open tasks are what the stage handlers' `pending()` report for the open stage of each running
cycle, as the reminder digests list them (perfcycle.notifications.reminders): the page and the
mails never
disagree about what is left to do. A manager also sees "My team": the reports each running or
recently completed cycle recorded for them, with goal state, released grade and a link to the
report's page (/me?cycle=ID&employee=EID). Anonymous visitors get a short page pointing at their
email and the new-link form, and nothing about cycles. The page answers even when the database
does not (not reachable, not migrated), saying so, since it is the first thing anyone opens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.settings import get_settings
from perfcycle.domain import access
from perfcycle.domain.models import Cycle, Participant
from perfcycle.domain.stages.base import PendingTask
from perfcycle.notifications import task_kinds
from perfcycle.notifications.reminders import OpenStage, describe, open_people_stages
from perfcycle.web import i18n
from perfcycle.web.deps import (
    SessionDep,
    Viewer,
    locale_of,
    render,
    session_data,
    viewer_of,
)
from perfcycle.web.queries.cycles import cycles_of
from perfcycle.web.queries.team import team_overview

log = logging.getLogger(__name__)
router = APIRouter()

# How long a completed cycle stays in a manager's "My team": long enough to cover the last
# annual cycle, so its grades stay at hand until the next one is running.
TEAM_RECENT = timedelta(days=365)

i18n.add_messages(
    {
        "home.title": {"zh-CN": "我的待办", "en": "My tasks"},
        "home.nothing": {
            "zh-CN": "目前没有需要您处理的事项。",
            "en": "Nothing to do right now.",
        },
        "home.nothing_more": {
            "zh-CN": "有新任务时，我们会发邮件通知您。",
            "en": "When a new task comes up, you will get an email about it.",
        },
        "home.overdue": {"zh-CN": "已逾期", "en": "overdue"},
        "home.no_page": {
            "zh-CN": "此事项暂不能在门户中办理，请按相关邮件中的说明完成。",
            "en": "This task is not in the portal yet: follow the email about it.",
        },
        "home.places": {"zh-CN": "您还可以查看", "en": "You can also open"},
        "home.team_goals": {
            "zh-CN": "团队目标（{cycle}）",
            "en": "Your team's goals ({cycle})",
        },
        "home.prefect": {
            "zh-CN": "Prefect 控制台：发起考核周期、审批校准",
            "en": "Prefect UI: launch cycles, approve calibration",
        },
        "home.no_link": {
            "zh-CN": "找不到邮件，或链接已过期？",
            "en": "Cannot find the email, or the link has expired?",
        },
        "home.team": {"zh-CN": "我的团队", "en": "My team"},
        "home.team_intro": {
            "zh-CN": "您在进行中和近一年结束的考核周期中的下属；点击姓名查看其考核页面"
            "（与本人所见相同）。",
            "en": "Your reports in running cycles and in those completed in the last year; open "
            "a name to see their review page as they see it.",
        },
        "home.team_person": {"zh-CN": "姓名", "en": "Name"},
        "home.team_goals_state": {"zh-CN": "目标状态", "en": "Goals"},
        "home.team_grade": {"zh-CN": "等级", "en": "Grade"},
        "home.team_not_released": {"zh-CN": "未发布", "en": "not released"},
        "home.db_down": {"zh-CN": "数据库不可用", "en": "The database is not reachable"},
        "home.db_down_text": {
            "zh-CN": "门户暂时无法读取数据库，请稍后再试。如果问题持续，请联系系统管理员"
            "（检查数据库地址，并运行 perfcycle db upgrade）。",
            "en": "The portal cannot read its database right now; please try again in a moment. "
            "If it keeps happening, tell the operator (check the database URL and run "
            "perfcycle db upgrade).",
        },
    }
)


@dataclass(frozen=True)
class Task:
    what: str
    action: str
    due_at: datetime
    overdue: bool
    # None when the task's kind has no portal page yet (its mail says what to do).
    href: str | None


@dataclass(frozen=True)
class CycleTasks:
    cycle_id: int
    period: str
    title: str
    tasks: list[Task]


@dataclass(frozen=True)
class Place:
    label: str
    href: str
    id: str


# ---------------------------------------------------------------- the page


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep) -> HTMLResponse:
    try:
        viewer = signed_in_viewer(request, session)
        if viewer is None:
            check_database(session)
            context: dict[str, Any] = {}
        else:
            context = viewer_context(session, viewer, locale_of(request))
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("home page: database not usable: %s", database_problem(exc))
        return render(request, "home.html", {"db_error": database_problem(exc)})
    return render(request, "home.html", {"db_error": "", **context})


def signed_in_viewer(request: Request, session: Session) -> Viewer | None:
    """Like deps.current_viewer, but an anonymous visitor gets the home page rather than a 401."""
    viewer = viewer_of(session, session_data(request))
    if viewer is not None:
        request.state.viewer = viewer  # render() and locale_of() speak the viewer's language
    return viewer


def check_database(session: Session) -> None:
    """Raises SQLAlchemyError when the database is unreachable or not migrated."""
    session.execute(select(Cycle.id).limit(1))


def database_problem(exc: SQLAlchemyError) -> str:
    # The first line names the cause (no such table, connection refused) without the SQL.
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def viewer_context(session: Session, viewer: Viewer, locale: str) -> dict[str, Any]:
    now = clock.now()
    return {
        "groups": open_tasks(session, viewer.person_id, locale, now),
        "places": places_for(session, viewer, locale),
        # Empty (and the section absent) unless some running or recent cycle recorded the viewer
        # as someone's manager.
        "team": team_overview(session, viewer.person_id, now - TEAM_RECENT),
    }


# ---------------------------------------------------------------- open tasks


def open_tasks(session: Session, person_id: str, locale: str, now: datetime) -> list[CycleTasks]:
    """The person's unfinished tasks in running cycles, by cycle; the most urgent cycle first."""
    found: dict[int, tuple[OpenStage, list[Task]]] = {}
    for stage in open_people_stages(session):
        pending = stage.pending(session)
        tasks = [task_of(stage, t, locale, now) for t in pending.get(person_id, [])]
        if tasks:
            found.setdefault(stage.cycle.id, (stage, []))[1].extend(tasks)
    groups = [
        CycleTasks(
            cycle_id=cycle_id,
            period=stage.cycle.period,
            title=stage.policy.title.get(locale),
            tasks=sorted(tasks, key=lambda t: t.due_at),
        )
        for cycle_id, (stage, tasks) in found.items()
    ]
    return sorted(groups, key=lambda g: (g.tasks[0].due_at, g.cycle_id))


def task_of(stage: OpenStage, task: PendingTask, locale: str, now: datetime) -> Task:
    due_at = stage.inst.due_at
    return Task(
        what=describe(task, locale),
        action=task.action,
        due_at=due_at,
        overdue=now >= due_at,
        href=task_kinds.page_of(task.kind, stage.cycle.id),
    )


# ---------------------------------------------------------------- where else to go


def places_for(session: Session, viewer: Viewer, locale: str) -> list[Place]:
    """The pages the viewer may open besides their tasks, by what they take part in and role."""
    t = i18n.translator(locale)
    places = []
    if cycles_of(session, viewer.person_id):
        # /me without a cycle shows the newest one and links the others.
        places.append(Place(t("me.title"), "/me", "place-me"))
    for cycle in cycles_reviewed(session, viewer):
        label = t("home.team_goals", cycle=t("pages.cycle_label", id=cycle.id, period=cycle.period))
        places.append(Place(label, f"/goals?cycle={cycle.id}", f"place-team-{cycle.id}"))
    if viewer.has(*access.READS_PROGRESS):  # auditors read it too, without its actions
        places.append(Place(t("hr.title"), "/hr/cycles", "place-hr"))
    if viewer.has(*access.READS_AUDIT_LOG):
        places.append(Place(t("audit.title"), "/audit", "place-audit"))
    if viewer.has(*access.USES_PREFECT_UI):
        places.append(Place(t("home.prefect"), get_settings().prefect_ui_url, "place-prefect"))
    return places


def cycles_reviewed(session: Session, viewer: Viewer) -> Iterable[Cycle]:
    """Running cycles with goal sheets the viewer reviews: someone reports to them (as the cycle
    recorded it) or, for HR, someone has no manager."""
    reviewed = access.reviews_goals_of(viewer.actor)
    if reviewed is None:
        return []
    managed = select(Participant.cycle_id).where(reviewed)
    return session.scalars(
        select(Cycle).where(Cycle.state == "running", Cycle.id.in_(managed)).order_by(Cycle.id)
    )
