"""What several portal pages share beyond dependency injection: loading the cycle a page is
about, reading form fields, using up a task's link, and wording a domain refusal (work the stage
no longer accepts, an actor who may not, bad input) as a page.

Route modules import these from here, never from each other (deps.py holds the request's session,
who is signed in, CSRF and rendering).
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, NotAllowed
from perfcycle.domain.deadlines import StageClosed
from perfcycle.domain.models import Cycle
from perfcycle.notifications.vocabulary import stage_title
from perfcycle.web import i18n
from perfcycle.web.deps import PageError, consume_task_token, locale_of, session_task_token
from perfcycle.web.queries.cycles import cycle_or_none

i18n.add_messages(
    {
        "pages.cycle_label": {"zh-CN": "考核周期 {id} · {period}", "en": "Cycle {id} · {period}"},
        "pages.no_such_cycle": {"zh-CN": "找不到考核周期 {id}。", "en": "There is no cycle {id}."},
        "pages.due_at": {"zh-CN": "截止时间：{when}", "en": "Deadline: {when}"},
        "pages.stage_closed": {"zh-CN": "阶段已结束", "en": "This stage is closed"},
        "pages.stage_closed_text": {
            "zh-CN": "“{stage}”阶段已于 {when} 截止，提交未被接受，未做任何更改。",
            "en": "The {stage} stage closed at {when}; the submission was not accepted and "
            "nothing was changed.",
        },
    }
)


def load_cycle(session: Session, request: Request, cycle_id: int) -> Cycle:
    cycle = cycle_or_none(session, cycle_id)
    if cycle is None:
        message = i18n.translate("pages.no_such_cycle", locale_of(request), id=cycle_id)
        raise PageError(404, "not_found", message)
    return cycle


def form_int(form: FormData, name: str) -> int:
    value = form.get(name)
    if not isinstance(value, str) or not value.strip().isdigit():
        raise PageError(400, "bad_form", f"{name}: expected a number, got {value!r}")
    return int(value)


def form_text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def stage_closed(request: Request, exc: StageClosed) -> PageError:
    """The 409 page for work the stage no longer accepts (the domain's one deadline rule)."""
    locale = locale_of(request)
    message = i18n.translate(
        "pages.stage_closed_text",
        locale,
        stage=stage_title(exc.stage, locale),
        when=(exc.closed_at or clock.now()).strftime("%Y-%m-%d %H:%M UTC"),
    )
    return PageError(409, "pages.stage_closed", message)


def use_up_link(session: Session, request: Request, task_kind: str, cycle_id: int) -> None:
    """Use up the task's link this browser came from, if it is still unused.

    Once used, the link has done its job; the signed session carries on (a returned sheet is
    signed again, a manager approves a late report), so an already used link is no refusal here.
    """
    row = session_task_token(session, request, task_kind, cycle_id)
    if row is not None and row.used_at is None:
        consume_task_token(session, request, task_kind, cycle_id)


def invalid(request: Request, exc: InvalidInput) -> PageError:
    """The page refusing a domain call: 409 stage closed, 403 not allowed, 422 bad input."""
    if isinstance(exc, StageClosed):
        return stage_closed(request, exc)
    locale = locale_of(request)
    message = "; ".join(i18n.problem_text(p, locale) for p in exc.problems)
    if isinstance(exc, NotAllowed):
        return PageError(403, "forbidden", message)
    return PageError(422, "invalid_input", message)
