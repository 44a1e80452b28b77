"""Portal security: bad links, cross-person access, CSRF, roles: each refuses and changes nothing.

Each refusal compares a snapshot of every table before and after.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import RaterAssignment, TaskToken
from perfcycle.web import security
from tests.support.factories import table_rows
from tests.support.probe import (
    NOW,
    build_org,
    csrf,
    issue,
    portal,
    press_sign_in,
    sign_in,
)


def refused(db_url: str, client: TestClient, method: str, path: str, **kwargs: Any) -> str:
    """Send the request; returns the page after checking the database did not change."""
    before = table_rows(db_url)
    response = client.request(method, path, **kwargs)
    assert table_rows(db_url) == before, f"{method} {path} changed the database"
    assert "<html" in response.text, "a refusal is a page, not JSON"
    return f"{response.status_code} {response.text}"


@pytest.fixture
def org(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    get_settings.cache_clear()
    yield build_org(db_url)
    get_settings.cache_clear()


# ---------------------------------------------------------------- bad links


@pytest.mark.parametrize("token", ["forged-token", "A" * 43, "x" * 500])
def test_a_forged_link_is_404_and_signs_nobody_in(db_url: str, org: int, token: str) -> None:
    issue(db_url, org)
    client = portal(db_url)

    page = refused(db_url, client, "GET", f"/t/{token}")

    assert page.startswith("404 ")
    assert "这个链接" in page or "找不到" in page
    assert security.SESSION_COOKIE not in client.cookies


def test_an_expired_link_is_410_with_the_renewal_form(db_url: str, org: int) -> None:
    token = issue(db_url, org, expires_at=NOW + timedelta(hours=1))
    with session_scope(db_url) as s:
        s.execute(update(TaskToken).values(expires_at=NOW - timedelta(seconds=1)))
    client = portal(db_url)

    page = refused(db_url, client, "GET", f"/t/{token}?lang=en")

    assert page.startswith("410 ")
    assert "This link has expired" in page
    assert 'action="/auth/new-link"' in page and 'name="email"' in page
    assert security.SESSION_COOKIE not in client.cookies


def test_a_used_link_signs_nobody_in_again_and_its_post_is_refused_409(
    db_url: str, org: int
) -> None:
    token = issue(db_url, org)
    first = portal(db_url)
    sign_in(first, token)
    assert first.post(f"/_probe/task/{org}", data={"csrf_token": csrf(first)}).status_code == 200

    # The browser that used it is still its person's: the link lands on the (read-only) page.
    assert first.get(f"/t/{token}").status_code == 303
    page = refused(db_url, first, "POST", f"/_probe/task/{org}", data={"csrf_token": csrf(first)})
    assert page.startswith("409 ")
    assert "2026-12-01 09:00 UTC" in page

    # Anyone else holding the link (a forwarded mail, a copied URL) gets no session from it.
    other = portal(db_url)
    page = refused(db_url, other, "GET", f"/t/{token}?lang=en")
    assert page.startswith("409 ")
    assert "already used at 2026-12-01 09:00 UTC" in page
    assert 'action="/auth/new-link"' in page and 'name="email"' in page
    assert security.SESSION_COOKIE not in other.cookies


def test_a_sign_in_link_works_once(db_url: str, org: int) -> None:
    token = issue(db_url, org, kind="sign_in")
    first = portal(db_url)
    assert press_sign_in(first, token).status_code == 303
    assert first.get("/_probe/me").json()["person"] == "amy"
    with session_scope(db_url) as s:
        assert s.scalars(select(TaskToken)).one().used_at == NOW

    other = portal(db_url)
    page = refused(db_url, other, "GET", f"/t/{token}?lang=en")
    assert page.startswith("409 ") and "each works once" in page
    page = refused(db_url, other, "POST", f"/t/{token}?lang=en", data={"csrf_token": csrf(other)})
    assert page.startswith("409 ")
    assert security.SESSION_COOKIE not in other.cookies


def test_a_link_that_expires_while_the_form_is_open_is_410_on_post(
    db_url: str, org: int
) -> None:
    token = issue(db_url, org, expires_at=NOW + timedelta(hours=1))
    client = portal(db_url)
    sign_in(client, token)
    with session_scope(db_url) as s:
        s.execute(update(TaskToken).values(expires_at=NOW - timedelta(seconds=1)))
    page = refused(
        db_url, client, "POST", f"/_probe/task/{org}?lang=en", data={"csrf_token": csrf(client)}
    )
    assert page.startswith("410 ") and "This link has expired" in page
    assert 'action="/auth/new-link"' in page


# ---------------------------------------------------------------- the wrong person


def test_a_link_of_someone_else_is_refused_to_a_signed_in_browser(db_url: str, org: int) -> None:
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    bos_link = issue(db_url, org, person="bo")

    page = refused(db_url, amy, "GET", f"/t/{bos_link}")

    assert page.startswith("403 ")
    assert "Amy" in page and "belongs to someone else" in page
    assert amy.get("/_probe/me").json()["person"] == "amy"  # still amy, not switched to bo


def test_a_session_cannot_post_another_persons_evaluation(db_url: str, org: int) -> None:
    with session_scope(db_url) as s:
        bos = RaterAssignment(cycle_id=org, rater_id="bo", ratee_id="amy", rater_type="peer")
        s.add(bos)
        s.flush()
        assignment_id = bos.id
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    form = {"csrf_token": csrf(amy), "q1": "5", "q1_comment": "great"}

    page = refused(db_url, amy, "POST", f"/evaluations/{assignment_id}", data=form)

    assert page.startswith("403 ")


def test_a_session_never_consumes_another_persons_link(db_url: str, org: int) -> None:
    issue(db_url, org, person="bo")
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    with session_scope(db_url) as s:
        bo_row = s.scalars(select(TaskToken).where(TaskToken.person_id == "bo")).one()
    # Even a cookie listing bo's link (it cannot be forged, but say it were signed) is ignored.
    data = security.decode_session(amy.cookies[security.SESSION_COOKIE], NOW)
    assert data is not None
    amy.cookies.set(security.SESSION_COOKIE, security.encode_session(data.with_token(bo_row.id)))

    response = amy.post(f"/_probe/task/{org}", data={"csrf_token": csrf(amy)})

    assert response.status_code == 200
    with session_scope(db_url) as s:
        assert s.scalars(select(TaskToken.used_at).where(TaskToken.person_id == "bo")).one() is None


# ---------------------------------------------------------------- CSRF and cookies


@pytest.mark.parametrize("token", [None, "", "forged", "same-length-" + "x" * 32])
def test_a_post_without_the_right_csrf_token_is_403(
    db_url: str, org: int, token: str | None
) -> None:
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org))
    data = {"note": "x"} if token is None else {"csrf_token": token, "note": "x"}

    page = refused(db_url, amy, "POST", f"/_probe/task/{org}", data=data)

    assert page.startswith("403 ")
    assert "nothing was changed" in page


def test_a_csrf_token_of_another_browser_or_person_is_403(db_url: str, org: int) -> None:
    amy, bo = portal(db_url), portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    sign_in(bo, issue(db_url, org, person="bo"))
    anonymous_token = csrf(portal(db_url))

    for token in (csrf(bo), anonymous_token):
        page = refused(db_url, amy, "POST", f"/_probe/task/{org}", data={"csrf_token": token})
        assert page.startswith("403 ")


def test_a_form_that_is_not_urlencoded_is_refused(db_url: str, org: int) -> None:
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org))
    page = refused(db_url, amy, "POST", f"/_probe/task/{org}", json={"csrf_token": csrf(amy)})
    assert page.startswith("415 ")


@pytest.mark.parametrize("how", ["flip", "payload", "garbage", "other-key"])
def test_a_tampered_session_cookie_is_401(
    db_url: str, org: int, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    cookie = amy.cookies[security.SESSION_COOKIE]
    body, signature = cookie.split(".")
    if how == "flip":
        tampered = f"{body}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    elif how == "payload":
        real = security.decode_session(cookie, NOW)
        assert real is not None
        as_bo = security.encode_session(security.new_session("bo", NOW))
        tampered = f"{as_bo.split('.')[0]}.{signature}"
    elif how == "garbage":
        tampered = "not-a-session"
    else:
        monkeypatch.setenv("PERFCYCLE_SECRET_KEY", "someone-elses-key")
        get_settings.cache_clear()
        tampered = security.encode_session(security.new_session("bo", NOW))
        monkeypatch.delenv("PERFCYCLE_SECRET_KEY")
        get_settings.cache_clear()
    amy.cookies.set(security.SESSION_COOKIE, tampered)

    page = refused(db_url, amy, "GET", "/_probe/me")

    assert page.startswith("401 ")
    assert 'action="/auth/new-link"' in page  # "sign in with the link from your email"


# ---------------------------------------------------------------- roles


@pytest.mark.parametrize("path", ["/hr/cycles", "/audit"])
def test_an_employee_cannot_open_hr_or_auditor_views(db_url: str, org: int, path: str) -> None:
    amy = portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))

    page = refused(db_url, amy, "GET", path)

    assert page.startswith("403 ")


@pytest.mark.parametrize("path", ["/hr/cycles", "/audit", "/me", "/_probe/me"])
@pytest.mark.usefixtures("org")
def test_nobody_signed_in_gets_401(db_url: str, path: str) -> None:
    assert refused(db_url, portal(db_url), "GET", path).startswith("401 ")


@pytest.mark.parametrize(
    "path", ["/%2F%2Fevil.example/", "//evil.example/x", "/%5C%5Cevil.example"]
)
@pytest.mark.usefixtures("org")
def test_the_language_switch_never_links_off_site(db_url: str, path: str) -> None:
    page = portal(db_url).get(path)
    assert page.status_code == 404
    links = re.findall(r'href="([^"]*lang=[^"]*)"', page.text)
    assert links and all(link.startswith("?") for link in links), links
    assert "evil.example" not in "".join(links)


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_link_and_session_checks_hold_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    get_settings.cache_clear()
    cycle_id = build_org(pg_url)
    assert refused(pg_url, portal(pg_url), "GET", "/t/forged").startswith("404 ")

    token = issue(pg_url, cycle_id, person="amy")
    amy = portal(pg_url)
    sign_in(amy, token)
    bad = refused(pg_url, amy, "POST", f"/_probe/task/{cycle_id}", data={"csrf_token": "x"})
    assert bad.startswith("403 ")
    assert amy.post(f"/_probe/task/{cycle_id}", data={"csrf_token": csrf(amy)}).status_code == 200
    again = refused(pg_url, amy, "POST", f"/_probe/task/{cycle_id}", data={"csrf_token": csrf(amy)})
    assert again.startswith("409 ")
    assert refused(pg_url, amy, "GET", f"/t/{issue(pg_url, cycle_id, person='bo')}").startswith(
        "403 "
    )
