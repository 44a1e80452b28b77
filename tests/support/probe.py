"""A five-person organisation with one running cycle, and probe pages that use the portal's
dependencies (web.deps) as a page does; the portal core and security tests drive them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from httpx import Response

from perfcycle.core.db import session_scope
from perfcycle.domain import audit
from perfcycle.domain.models import Cycle, Department, Employee, Participant
from perfcycle.notifications import links
from perfcycle.web.app import create_app
from perfcycle.web.deps import (
    CsrfForm,
    PageError,
    SessionDep,
    Viewer,
    ViewerDep,
    consume_task_token,
    locale_of,
    require_roles,
    run_after_commit,
)
from tests.support.portal import CSRF_FIELD

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LINK_EXPIRES = NOW + timedelta(days=10)
# id, manager, locale, active
PEOPLE = [
    ("boss", None, "zh-CN", True),
    ("amy", "boss", "en", True),
    ("bo", "boss", "zh-CN", True),
    ("hr1", None, "zh-CN", True),
    ("gone", "boss", "en", False),
]


def build_org(db_url: str) -> int:
    with session_scope(db_url) as s:
        s.add(Department(id="cs", name="Customer service", type="external_service"))
        for person_id, manager_id, locale, active in PEOPLE:
            s.add(
                Employee(
                    id=person_id,
                    name=person_id.title(),
                    email=f"{person_id.title()}@Example.com",
                    department_id="cs",
                    manager_id=manager_id,
                    locale=locale,
                    active=active,
                )
            )
            s.flush()
        cycle = Cycle(
            policy="test-policy",
            policy_digest="0" * 64,
            period="2026-Q4",
            period_start=date(2026, 10, 1),
            period_end=date(2026, 12, 31),
            scope_key="",
            start_date=date(2026, 10, 1),
            state="running",
            current_stage="evaluation",
            created_at=NOW - timedelta(days=30),
        )
        s.add(cycle)
        s.flush()
        for person_id, _, _, active in PEOPLE:
            if active:
                s.add(Participant(cycle_id=cycle.id, employee_id=person_id, department_id="cs"))
        return cycle.id


def issue(
    db_url: str,
    cycle_id: int,
    person: str = "amy",
    kind: str = "evaluation",
    expires_at: datetime = LINK_EXPIRES,
) -> str:
    """A task link as the mails carry it; returns the token."""
    with session_scope(db_url) as s:
        return links.token_of(links.issue_link(s, person, cycle_id, kind, f"{kind}:1", expires_at))


probe = APIRouter()


hooks_ran: list[str] = []


@probe.get("/_probe/me")
def probe_me(request: Request, viewer: ViewerDep) -> dict[str, Any]:
    return {"person": viewer.person_id, "roles": sorted(viewer.roles), "locale": locale_of(request)}


@probe.get("/_probe/hr")
def probe_hr(viewer: Annotated[Viewer, Depends(require_roles("hr_admin"))]) -> dict[str, str]:
    return {"person": viewer.person_id}


@probe.post("/_probe/task/{cycle_id}")
def probe_task(
    request: Request, cycle_id: int, session: SessionDep, viewer: ViewerDep, form: CsrfForm
) -> dict[str, Any]:
    """A task's POST as the pages write it: use the link up and change something."""
    row = consume_task_token(session, request, "evaluation", cycle_id)
    audit.record(session, actor=viewer.person_id, action="probe.done", subject="probe")
    run_after_commit(request, lambda: hooks_ran.append("after commit"))
    return {"consumed": row.id if row else None, "note": form.get("note")}


@probe.post("/_probe/refuse")
def probe_refuse(request: Request, session: SessionDep, viewer: ViewerDep) -> None:
    audit.record(session, actor=viewer.person_id, action="probe.refused", subject="probe")
    run_after_commit(request, lambda: hooks_ran.append("should not run"))
    raise PageError(422, "invalid_input", "score 9 is out of range 1..5 (field q1)")


@probe.post("/_probe/fails-at-commit/{cycle_id}")
def probe_fails_at_commit(
    request: Request, cycle_id: int, session: SessionDep, _viewer: ViewerDep, _form: CsrfForm
) -> dict[str, str]:
    """Uses the link up and answers "done", but the transaction cannot commit (duplicate id)."""
    consume_task_token(session, request, "evaluation", cycle_id)
    session.add(Department(id="cs", name="a second cs", type="external_service"))
    run_after_commit(request, lambda: hooks_ran.append("should not run"))
    return {"result": "done"}


def portal(db_url: str) -> TestClient:
    app: FastAPI = create_app(db_url)
    app.include_router(probe)
    return TestClient(app, follow_redirects=False)


def sign_in(client: TestClient, token: str) -> None:
    response = client.get(f"/t/{token}")
    assert response.status_code == 303, response.text


def press_sign_in(client: TestClient, token: str) -> Response:
    """Open a sign-in link (a page with a button) and press its button."""
    page = client.get(f"/t/{token}")
    assert page.status_code == 200, page.text
    found = CSRF_FIELD.search(page.text)
    assert found and f'action="/t/{token}"' in page.text, page.text
    return client.post(f"/t/{token}", data={"csrf_token": found.group(1)})


def csrf(client: TestClient) -> str:
    """The CSRF token a form on a page carries, for whoever this client is signed in as."""
    page = client.get("/auth/sign-in")
    found = CSRF_FIELD.search(page.text)
    assert found, page.text
    return found.group(1)
