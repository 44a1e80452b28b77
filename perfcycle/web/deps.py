"""What every portal page uses: the request's database session, who is signed in, CSRF, rendering.

A page module looks like this:

    router = APIRouter()

    @router.get("/evaluations")
    def evaluations(request: Request, cycle: int, session: SessionDep, viewer: ViewerDep
                    ) -> HTMLResponse:
        return render(request, "evaluations.html", {...})

    @router.post("/evaluations")
    def submit(request: Request, session: SessionDep, viewer: ViewerDep, form: CsrfForm
               ) -> Response:
        ...  # raise PageError(...) to refuse: the transaction rolls back, the page says why
        consume_task_token(session, request, "evaluation", cycle_id)
        run_after_commit(request, lambda: orchestrator.resume(...))
        return RedirectResponse(..., status_code=303)

(SessionDep, ViewerDep and CsrfForm are the Annotated forms of Depends(get_session),
Depends(current_viewer) and Depends(verify_csrf); `Annotated[Viewer, Depends(require_roles(...))]`
for role-gated pages.)

One transaction per request: it commits when the endpoint returns and rolls back when it raises.
Refuse with `raise PageError(...)`, never by returning an error page after writing something.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased
from starlette.datastructures import FormData, UploadFile

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain import access, engine
from perfcycle.domain.models import Cycle, Employee, PortalRole, PortalSessionGeneration, TaskToken
from perfcycle.notifications import links
from perfcycle.notifications.vocabulary import stage_title
from perfcycle.web import i18n, security

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_PATH = "/static"
ROLES = access.ROLES
MAX_FORM_BYTES = 1_000_000
MAX_FORM_FIELDS = 2000
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(("html", "htm", "xml", "svg")),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Viewer:
    person_id: str
    name: str
    locale: str
    roles: frozenset[str]

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def actor(self) -> access.Actor:
        """Who the signed-in person is to the domain: themself with their portal roles."""
        return access.Actor.person(self.person_id, self.roles)


class PageError(Exception):
    """Raise from a page or dependency to refuse: nothing is committed and the error page says
    what happened. `title_key` is an i18n key; `message` is shown as is (already translated or
    naming the field)."""

    def __init__(
        self,
        status_code: int,
        title_key: str,
        message: str = "",
        *,
        renewal_form: bool = False,
    ) -> None:
        super().__init__(f"{status_code} {title_key}: {message}")
        self.status_code = status_code
        self.title_key = title_key
        self.message = message
        self.renewal_form = renewal_form


# ---------------------------------------------------------------- database session


def database_url(request: Request) -> str | None:
    return getattr(request.app.state, "database_url", None)


def after_response(request: Request) -> Iterator[None]:
    """Runs the work queued with run_after_commit once the response is on its way.

    Request-scoped (FastAPI's default): its exit runs after the response is sent, so a slow
    Prefect API does not hold up the page. It is skipped when the request failed, since the
    exception passes through the `yield`.
    """
    yield
    _run_after_commit_hooks(request)


def get_session(
    request: Request, _after: Annotated[None, Depends(after_response)]
) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent (see SessionDep)."""
    with session_scope(database_url(request)) as session:
        yield session


def run_after_commit(request: Request, action: Callable[[], object]) -> None:
    """Do `action` once this request's transaction has committed (resume a Prefect flow run).

    Never when it rolls back. A failing action is logged, not shown: the submission is saved and
    cycle-clock catches up on what the action would have done.
    """
    hooks: list[Callable[[], object]] = getattr(request.state, "after_commit", [])
    hooks.append(action)
    request.state.after_commit = hooks


def resume_when_complete(request: Request, session: Session, cycle: Cycle) -> None:
    """If this request completed the waiting stage's condition, resume the cycle's suspended run
    once committed. Every submission that can complete a stage calls this; if Prefect is
    unreachable the answer stays saved and cycle-clock resumes the run later."""
    if cycle.flow_run_id and engine.resume_reason(session, cycle) == "complete":
        flow_run_id = cycle.flow_run_id
        run_after_commit(request, lambda: _resume_flow(flow_run_id))


def _resume_flow(flow_run_id: str) -> None:
    from perfcycle.orchestration import (
        client as orchestrator,  # imports Prefect: only when a stage completes
    )

    try:
        resumed = orchestrator.resume(flow_run_id)
    except Exception:
        log.warning("could not resume flow run %s; cycle-clock will", flow_run_id, exc_info=True)
        return
    log.info("flow run %s resumed: %s", flow_run_id, resumed)


def _run_after_commit_hooks(request: Request) -> None:
    for action in getattr(request.state, "after_commit", []):
        try:
            action()
        except Exception:
            log.exception("after-commit action failed; cycle-clock will catch up")
    request.state.after_commit = []


# ---------------------------------------------------------------- who is signed in


def session_data(request: Request) -> security.SessionData | None:
    """The verified session cookie, or None (missing, tampered with or expired)."""
    return security.decode_session(request.cookies.get(security.SESSION_COOKIE), clock.now())


def session_generation(session: Session, person_id: str) -> int:
    """The person's current sign-out count: a session cookie must carry it to be valid."""
    found = session.scalar(
        select(PortalSessionGeneration.generation).where(
            PortalSessionGeneration.person_id == person_id
        )
    )
    return found or 0


def viewer_of(session: Session, data: security.SessionData | None) -> Viewer | None:
    """Who a verified session cookie signs in, or None: no cookie, a person no longer active,
    or a session they ended by signing out (on this or any other device)."""
    if data is None:
        return None
    return load_viewer(session, data.person_id, generation=data.generation)


def load_viewer(session: Session, person_id: str, generation: int | None = None) -> Viewer | None:
    """The active employee's view of the portal with their roles; None if not an active employee.

    With `generation`, also None when the person signed out since a session of that generation
    was issued. Runs on every request: two plain queries, no ORM objects.
    """
    report = aliased(Employee)
    has_reports = exists().where(report.manager_id == person_id, report.active.is_(True))
    current = (
        select(PortalSessionGeneration.generation)
        .where(PortalSessionGeneration.person_id == Employee.id)
        .scalar_subquery()
    )
    row = session.execute(
        select(
            Employee.name,
            Employee.email,
            Employee.locale,
            has_reports.label("manager"),
            current.label("generation"),
        ).where(Employee.id == person_id, Employee.active.is_(True))
    ).one_or_none()
    if row is None or (generation is not None and generation != (row.generation or 0)):
        return None
    roles = {"employee", "manager"} if row.manager else {"employee"}
    principals = (person_id, row.email.strip().lower())
    roles.update(session.scalars(select(PortalRole.role).where(PortalRole.principal.in_(principals))))
    return Viewer(
        person_id=person_id,
        name=row.name,
        locale=i18n.supported_locale(row.locale),
        roles=frozenset(roles),
    )


# scope="function": commit when the route returns, before its response leaves. With FastAPI's
# default the commit would run after the response is sent, and a person could be told "saved"
# about a transaction that then failed (a lost submission).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def current_viewer(request: Request, session: SessionDep) -> Viewer:
    """Who is signed in; 401 page "sign in with the link from your email" otherwise."""
    cached = getattr(request.state, "viewer", None)
    if isinstance(cached, Viewer):
        return cached
    viewer = viewer_of(session, session_data(request))
    if viewer is None:
        text = i18n.translate("sign_in_required_text", _locale(request))
        raise PageError(401, "sign_in_required", text)
    request.state.viewer = viewer
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def require_roles(*roles: str) -> Callable[..., Viewer]:
    """A dependency admitting viewers holding any of `roles`; 403 page naming them otherwise."""
    unknown = set(roles) - ROLES
    if not roles or unknown:
        raise ValueError(f"require_roles: unknown roles {sorted(unknown)}; known: {sorted(ROLES)}")

    def dependency(request: Request, viewer: ViewerDep) -> Viewer:
        if not viewer.has(*roles):
            locale = _locale(request)
            names = ", ".join(i18n.translate(f"role.{r}", locale) for r in roles)
            raise PageError(403, "forbidden", i18n.translate("needs_role", locale, roles=names))
        return viewer

    return dependency


# ---------------------------------------------------------------- task links in the session


def session_task_token(
    session: Session, request: Request, task_kind: str, cycle_id: int
) -> TaskToken | None:
    """The link this browser opened for the signed-in person's task (unused ones first).

    None when the person arrived another way (a sign-in link, the menu). A page shows "this link
    was already used" when the row's used_at is set.
    """
    data = session_data(request)
    if data is None or not data.token_ids:
        return None
    rows = session.scalars(
        select(TaskToken).where(
            TaskToken.id.in_(data.token_ids),
            TaskToken.person_id == data.person_id,
            TaskToken.task_kind == task_kind,
            TaskToken.cycle_id == cycle_id,
        )
    ).all()
    if not rows:
        return None
    return sorted(rows, key=lambda r: (r.used_at is None, r.id))[-1]


def consume_task_token(
    session: Session, request: Request, task_kind: str, cycle_id: int
) -> TaskToken | None:
    """Use up the link this session came from for this task, in the request's transaction.

    Call it in the POST that completes the task. Raises PageError 409 when that link was already
    used (or expired meanwhile); returns None when the session came from no link for this task.
    """
    row = session_task_token(session, request, task_kind, cycle_id)
    if row is None:
        return None
    if row.used_at is not None:
        raise PageError(409, "link_used", _used_message(request, row))
    try:
        links.consume(session, row, clock.now())
    except InvalidInput as exc:
        if row.used_at is None:  # it expired between showing the form and this POST
            message = i18n.translate("link_expired_text", _locale(request))
            raise PageError(410, "link_expired", message, renewal_form=True) from exc
        raise PageError(409, "link_used", _used_message(request, row)) from exc
    return row


def _used_message(request: Request, row: TaskToken) -> str:
    when = row.used_at.strftime("%Y-%m-%d %H:%M UTC") if row.used_at else ""
    return i18n.translate("link_used_text", _locale(request), when=when)


# ---------------------------------------------------------------- forms and CSRF


async def read_form(request: Request) -> FormData:
    """The urlencoded form of a POST (the portal's forms never upload files)."""
    cached = getattr(request.state, "form", None)
    if isinstance(cached, FormData):
        return cached
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise PageError(415, "bad_form", f"expected {FORM_CONTENT_TYPE}, got {content_type!r}")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "bad_form", f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise PageError(400, "bad_form", f"unreadable form: {exc}") from exc
    form = FormData(list[tuple[str, str | UploadFile]](pairs))
    request.state.form = form
    return form


def csrf_token(request: Request) -> str:
    """The CSRF token for forms on this page (bound to this browser and who is signed in)."""
    nonce = request.cookies.get(security.CSRF_COOKIE) or getattr(request.state, "csrf_nonce", None)
    if not nonce:
        nonce = security.new_csrf_nonce()
        request.state.csrf_nonce = nonce
    data = session_data(request)
    return security.csrf_token_for(nonce, data.person_id if data else None)


async def verify_csrf(request: Request) -> FormData:
    """Dependency for every POST: the form, once its csrf_token matches; 403 page otherwise."""
    form = await read_form(request)
    submitted = form.get("csrf_token")
    data = session_data(request)
    if not security.csrf_valid(
        submitted if isinstance(submitted, str) else None,
        request.cookies.get(security.CSRF_COOKIE),
        data.person_id if data else None,
    ):
        raise PageError(403, "csrf_failed", i18n.translate("csrf_failed_text", _locale(request)))
    return form


CsrfForm = Annotated[FormData, Depends(verify_csrf)]


# ---------------------------------------------------------------- rendering


def _locale(request: Request) -> str:
    """?lang= first, then the language chosen earlier (cookie), then the viewer's own."""
    asked = request.query_params.get("lang")
    if asked and asked in i18n.LOCALES:
        if request.cookies.get(security.LANG_COOKIE) != asked:
            request.state.set_lang = asked
        return asked
    chosen = request.cookies.get(security.LANG_COOKIE)
    if chosen in i18n.LOCALES:
        return str(chosen)
    viewer = getattr(request.state, "viewer", None)
    if isinstance(viewer, Viewer):
        return viewer.locale
    return i18n.DEFAULT_LOCALE


def locale_of(request: Request) -> str:
    """The language this request's page is shown in."""
    return _locale(request)


def _lang_url(request: Request, locale: str) -> str:
    # Query only: the browser keeps the page's own path. Echoing the path would let a 404 for
    # /%2F%2Fevil.example/ link to "//evil.example/", which browsers read as another host.
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    return f"?{urlencode([*params, ('lang', locale)])}"


def render(
    request: Request,
    template_name: str,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A page in the base layout, in the viewer's language, with `t`, `csrf_token`, `viewer`."""
    locale = _locale(request)
    viewer = getattr(request.state, "viewer", None)
    variables: dict[str, Any] = {
        "request": request,
        "locale": locale,
        "locales": i18n.LOCALES,
        "t": i18n.translator(locale),
        # Stage names as the mails word them, so a page and its mail say the same.
        "stage_name": lambda name: stage_title(name, locale),
        "csrf_token": csrf_token(request),
        "viewer": viewer if isinstance(viewer, Viewer) else None,
        "signed_in": session_data(request) is not None,
        "lang_url": lambda code: _lang_url(request, code),
        "static": lambda name: f"{STATIC_PATH}/{name}",
    }
    variables.update(context or {})
    html = _templates.get_template(template_name).render(variables)
    response = HTMLResponse(html, status_code=status_code)
    attach_pending_cookies(request, response)
    return response


def error_page(
    request: Request,
    status_code: int,
    title_key: str,
    message: str,
    *,
    renewal_form: bool = False,
) -> HTMLResponse:
    """The one "what happened" page: forged/expired/used/wrong-person link, tampered form, ..."""
    response = render(
        request,
        "error.html",
        {
            "status": status_code,
            "title_key": title_key,
            "message": message,
            "renewal_form": renewal_form,
        },
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def page_error_response(request: Request, error: PageError) -> HTMLResponse:
    return error_page(
        request,
        error.status_code,
        error.title_key,
        error.message,
        renewal_form=error.renewal_form,
    )


def attach_pending_cookies(request: Request, response: Response) -> None:
    """Cookies this request decided on while rendering (a new CSRF nonce, a chosen language)."""
    secure = security.is_secure_origin()
    nonce = getattr(request.state, "csrf_nonce", None)
    if nonce and not request.cookies.get(security.CSRF_COOKIE):
        response.set_cookie(
            security.CSRF_COOKIE, nonce, httponly=True, samesite="lax", secure=secure, path="/"
        )
    lang = getattr(request.state, "set_lang", None)
    if lang:
        response.set_cookie(
            security.LANG_COOKIE,
            lang,
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="lax",
            secure=secure,
            path="/",
        )


def set_session_cookie(response: Response, data: security.SessionData) -> None:
    response.set_cookie(
        security.SESSION_COOKIE,
        security.encode_session(data),
        max_age=data.expires_at - data.issued_at,
        httponly=True,
        samesite="lax",
        secure=security.is_secure_origin(),
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(
        security.SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=security.is_secure_origin(),
    )


def template_names() -> Iterable[str]:
    return _templates.list_templates()
