"""Signing in: opening a link from a mail (/t/{token}), asking for a new link, signing out.

Opening a task link (GET) never uses it up: it signs the browser in as the link's person and
remembers the link, and the task's POST consumes it (deps.consume_task_token). Whoever holds a
link is its person; a browser already signed in as someone else is refused rather than
silently switched.

A used link signs nobody in again: its person, if this browser is already theirs, lands on the
page (their answers, read-only); anyone else gets 409 and the form for a new sign-in link. A
sign-in link has no task: its page has a button, and pressing it (POST) is what uses it up, so
a mail scanner that opens links does not spend it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput
from perfcycle.domain import audit
from perfcycle.domain.models import Employee, OutboxMessage, PortalSessionGeneration, TaskToken
from perfcycle.notifications import links, outbox, task_kinds
from perfcycle.web import i18n, security
from perfcycle.web.deps import (
    CsrfForm,
    PageError,
    SessionDep,
    clear_session_cookie,
    load_viewer,
    locale_of,
    render,
    session_data,
    session_generation,
    set_session_cookie,
    viewer_of,
)

router = APIRouter()

SIGN_IN_TEMPLATE = "sign_in_link"
SIGN_IN_LINK_LIFETIME = timedelta(hours=4)
# Per address and hour: enough for a lost mail or two, too few to flood someone's inbox.
SIGN_IN_MAILS_PER_HOUR = 3
MAX_EMAIL_CHARS = 320


def task_page(row: TaskToken) -> str:
    """Where the link lands: its kind's page (perfcycle.notifications.task_kinds), else home."""
    return task_kinds.landing(row.task_kind, row.cycle_id)


# ---------------------------------------------------------------- opening a link


@router.get("/t/{token}")
def open_link(request: Request, token: str, session: SessionDep) -> Response:
    row, current = _checked_link(request, session, token)
    if row.used_at is not None:
        if current is not None:  # already signed in as the link's person: nothing to grant
            return _landing(row, current)
        raise _used_link(request, row)
    if row.task_kind == task_kinds.SIGN_IN:
        # Mail scanners open links to check them: a GET must not use up a one-time link. The
        # person confirms with a button (POST below), which a scanner does not press.
        response = render(request, "auth_continue.html", {"token": token})
        response.headers["Cache-Control"] = "no-store"
        return response
    return _landing(row, current or _fresh_session(session, row))


@router.post("/t/{token}")
def confirm_sign_in(request: Request, token: str, session: SessionDep, _form: CsrfForm) -> Response:
    """The sign-in link's button: uses the link up and signs the browser in."""
    row, current = _checked_link(request, session, token)
    if row.task_kind != task_kinds.SIGN_IN:
        raise PageError(400, "bad_request", "only a sign-in link is confirmed with a POST")
    if row.used_at is not None:
        raise _used_link(request, row)
    try:
        links.consume(session, row, clock.now())
    except InvalidInput:  # another request used it a moment ago
        raise _used_link(request, row) from None
    return _landing(row, current or _fresh_session(session, row))


def _checked_link(
    request: Request, session: Session, token: str
) -> tuple[TaskToken, security.SessionData | None]:
    """The link's row and this browser's live session (None if it has none, or one ended by
    signing out), or the page saying why the link cannot be used: unknown 404, expired 410,
    someone else's 403, of a person who left 404."""
    current = session_data(request)
    signed_in = viewer_of(session, current)
    if signed_in is not None:
        request.state.viewer = signed_in  # pages below speak the signed-in person's language
    else:
        current = None  # a session ended by signing out (or of someone who left) counts for nothing
    row = _token_row(session, token)
    if row is None:
        raise _unknown_link(request)
    if clock.now() >= row.expires_at:
        raise PageError(
            410,
            "link_expired",
            i18n.translate("link_expired_text", locale_of(request)),
            renewal_form=True,
        )
    if current is not None and current.person_id != row.person_id:
        name = signed_in.name if signed_in else current.person_id
        raise PageError(
            403, "wrong_person", i18n.translate("wrong_person_text", locale_of(request), name=name)
        )
    if load_viewer(session, row.person_id) is None:
        # The person left the organisation after the mail was sent.
        raise _unknown_link(request)
    return row, current


def _fresh_session(session: Session, row: TaskToken) -> security.SessionData:
    return security.new_session(
        row.person_id, clock.now(), session_generation(session, row.person_id)
    )


def _landing(row: TaskToken, base: security.SessionData) -> Response:
    response = RedirectResponse(task_page(row), status_code=303)
    response.headers["Cache-Control"] = "no-store"
    set_session_cookie(response, base.with_token(row.id))
    return response


def _used_link(request: Request, row: TaskToken) -> PageError:
    key = "link_used_sign_in_text" if row.task_kind == task_kinds.SIGN_IN else "link_used_open_text"
    when = row.used_at.strftime("%Y-%m-%d %H:%M UTC") if row.used_at else ""
    message = i18n.translate(key, locale_of(request), when=when)
    return PageError(409, "link_used", message, renewal_form=True)


def _unknown_link(request: Request) -> PageError:
    return PageError(404, "link_unknown", i18n.translate("link_unknown_text", locale_of(request)))


def _token_row(session: Session, token: str) -> TaskToken | None:
    """The row of a link, expired ones included (links.resolve hides those; here they get 410)."""
    if not 0 < len(token) <= links.MAX_TOKEN_CHARS:
        return None
    return session.scalar(select(TaskToken).where(TaskToken.token_hash == links.hash_token(token)))


# ---------------------------------------------------------------- asking for a link


@router.get("/auth/new-link", response_class=HTMLResponse)
def new_link_form(request: Request) -> HTMLResponse:
    return _email_form(request, "new_link_title", "/auth/new-link")


@router.get("/auth/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request) -> HTMLResponse:
    return _email_form(request, "sign_in_title", "/auth/sign-in")


@router.post("/auth/new-link", response_class=HTMLResponse)
def request_new_link(request: Request, session: SessionDep, form: CsrfForm) -> HTMLResponse:
    return _send_sign_in_link(request, session, form, "new_link_title", "/auth/new-link")


@router.post("/auth/sign-in", response_class=HTMLResponse)
def request_sign_in(request: Request, session: SessionDep, form: CsrfForm) -> HTMLResponse:
    return _send_sign_in_link(request, session, form, "sign_in_title", "/auth/sign-in")


def _email_form(
    request: Request,
    title_key: str,
    action: str,
    email: str = "",
    problem: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    context = {"title_key": title_key, "action": action, "email": email, "problem": problem}
    return render(request, "auth_new_link.html", context, status_code=status_code)


def _send_sign_in_link(
    request: Request, session: Session, form: FormData, title_key: str, action: str
) -> HTMLResponse:
    """Same answer whether or not the address is known: the page reveals no accounts."""
    raw = form.get("email")
    email = raw.strip().lower() if isinstance(raw, str) else ""
    if not _looks_like_email(email):
        problem = i18n.translate("email_required", locale_of(request))
        return _email_form(request, title_key, action, email[:MAX_EMAIL_CHARS], problem, 422)
    employee = _active_employee_by_email(session, email)
    now = clock.now()
    if employee is not None and _sign_in_mails_last_hour(session, email, now) < (
        SIGN_IN_MAILS_PER_HOUR
    ):
        _enqueue_sign_in_link(session, employee, now)
    hours = int(SIGN_IN_LINK_LIFETIME.total_seconds() // 3600)
    return render(request, "auth_sent.html", {"hours": hours})


def _looks_like_email(email: str) -> bool:
    local, at, domain = email.partition("@")
    return bool(at and local and "." in domain and len(email) <= MAX_EMAIL_CHARS) and not any(
        c.isspace() for c in email
    )


def _active_employee_by_email(session: Session, email: str) -> Employee | None:
    return session.scalars(
        select(Employee)
        .where(func.lower(func.trim(Employee.email)) == email, Employee.active.is_(True))
        .order_by(Employee.id)
        .limit(1)
    ).first()


def _sign_in_mails_last_hour(session: Session, email: str, now: datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.template == SIGN_IN_TEMPLATE,
                func.lower(OutboxMessage.recipient_email) == email,
                OutboxMessage.created_at > now - timedelta(hours=1),
            )
        )
        or 0
    )


def _enqueue_sign_in_link(session: Session, employee: Employee, now: datetime) -> None:
    expires_at = now + SIGN_IN_LINK_LIFETIME
    url = links.issue_link(
        session, employee.id, None, task_kinds.SIGN_IN, task_kinds.SIGN_IN, expires_at
    )
    token_hash = links.hash_token(links.token_of(url))
    outbox.enqueue(
        session,
        [
            outbox.Mail(
                cycle_id=None,
                recipient_id=employee.id,
                recipient_email=employee.email,
                locale=employee.locale,
                template=SIGN_IN_TEMPLATE,
                occurrence=token_hash[:16],
                context={
                    "name": employee.name,
                    "link": url,
                    "expires_at": expires_at.isoformat(),
                    "hours": int(SIGN_IN_LINK_LIFETIME.total_seconds() // 3600),
                },
            )
        ],
    )
    audit.record(
        session,
        actor=employee.id,
        action="portal.sign_in_link",
        subject=f"employee:{employee.id}",
        after={"expires_at": expires_at.isoformat()},
    )


# ---------------------------------------------------------------- signing out


@router.post("/auth/sign-out", response_class=HTMLResponse)
def sign_out(request: Request, session: SessionDep, _form: CsrfForm) -> HTMLResponse:
    """Ends this browser's session and every other one of the person's (a copied cookie, another
    device): their sign-out count moves on, and sessions carry the count they were issued at."""
    data = session_data(request)
    if viewer_of(session, data) is not None and data is not None:
        _end_sessions(session, data.person_id)
    response = render(request, "auth_signed_out.html", {"signed_in": False})
    clear_session_cookie(response)
    return response


def _end_sessions(session: Session, person_id: str) -> None:
    now = clock.now()
    row = session.get(PortalSessionGeneration, person_id, with_for_update=True)
    if row is None:
        session.add(PortalSessionGeneration(person_id=person_id, generation=1, signed_out_at=now))
    else:
        row.generation += 1
        row.signed_out_at = now
    audit.record(
        session, actor=person_id, action="portal.signed_out", subject=f"person:{person_id}"
    )
