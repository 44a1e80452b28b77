"""Portal core: signing in from a mail link, sessions, roles, CSRF, languages, the new-link mail."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from perfcycle.cli import roles as roles_cli
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain.models import (
    AuditEvent,
    OutboxMessage,
    PortalRole,
    TaskToken,
)
from perfcycle.notifications import links
from perfcycle.web import i18n, routes, security
from perfcycle.web.app import create_app
from perfcycle.web.deps import require_roles
from perfcycle.web.routes import ROUTERS
from tests.support.factories import table_rows
from tests.support.probe import (
    CSRF_FIELD,
    NOW,
    build_org,
    csrf,
    hooks_ran,
    issue,
    portal,
    press_sign_in,
    sign_in,
)

# ---------------------------------------------------------------- the org and the app


@pytest.fixture
def org(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """PEOPLE in one department and one running cycle; the clock pinned at NOW. Yields its id."""
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    monkeypatch.delenv("PERFCYCLE_PORTAL_BASE_URL", raising=False)
    get_settings.cache_clear()
    yield build_org(db_url)
    get_settings.cache_clear()


def outbox_rows(db_url: str) -> list[OutboxMessage]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


# ---------------------------------------------------------------- opening a link


@pytest.mark.parametrize(
    ("kind", "page"),
    [
        ("evaluation", "/evaluations?cycle={c}"),
        ("goals", "/goals?cycle={c}"),
        ("goals_approval", "/goals?cycle={c}"),
        ("results", "/me?cycle={c}"),
    ],
)
def test_a_link_signs_in_and_lands_on_its_task_page(
    db_url: str, org: int, kind: str, page: str
) -> None:
    client = portal(db_url)
    token = issue(db_url, org, kind=kind)

    response = client.get(f"/t/{token}")

    assert response.status_code == 303
    assert response.headers["location"] == page.format(c=org)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{security.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert client.get("/_probe/me").json()["person"] == "amy"


def test_a_sign_in_link_signs_in_only_when_its_button_is_pressed(db_url: str, org: int) -> None:
    token = issue(db_url, org, kind="sign_in")
    scanner = portal(db_url)  # a mail scanner opens every link it finds: that must spend nothing
    before = table_rows(db_url)
    page = scanner.get(f"/t/{token}?lang=en")
    assert page.status_code == 200 and "works once" in page.text
    assert table_rows(db_url) == before and security.SESSION_COOKIE not in scanner.cookies
    assert scanner.get("/_probe/me").status_code == 401

    person = portal(db_url)
    response = press_sign_in(person, token)
    assert (response.status_code, response.headers["location"]) == (303, "/")
    assert person.get("/_probe/me").json()["person"] == "amy"
    with session_scope(db_url) as s:
        assert s.scalars(select(TaskToken)).one().used_at == NOW
    # A task link is not confirmed this way.
    task = issue(db_url, org)
    assert person.post(f"/t/{task}", data={"csrf_token": csrf(person)}).status_code == 400


def test_opening_a_link_uses_nothing_up_and_changes_nothing(db_url: str, org: int) -> None:
    token = issue(db_url, org)
    before = table_rows(db_url)

    for _ in range(3):
        sign_in(portal(db_url), token)

    assert table_rows(db_url) == before


def test_the_session_cookie_is_secure_when_the_portal_is_served_over_https(
    db_url: str, org: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFCYCLE_PORTAL_BASE_URL", "https://portal.example.cn")
    get_settings.cache_clear()
    token = issue(db_url, org)

    cookie = portal(db_url).get(f"/t/{token}").headers["set-cookie"]

    assert "Secure" in cookie and "HttpOnly" in cookie


def test_the_task_post_consumes_the_link_once_and_commits(db_url: str, org: int) -> None:
    client = portal(db_url)
    token = issue(db_url, org)
    sign_in(client, token)
    hooks_ran.clear()

    response = client.post(f"/_probe/task/{org}", data={"csrf_token": csrf(client), "note": "好"})

    assert response.status_code == 200, response.text
    assert response.json()["note"] == "好"
    with session_scope(db_url) as s:
        row = s.scalars(select(TaskToken)).one()
        actions = list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert row.used_at == NOW and response.json()["consumed"] == row.id
    assert actions == ["link.used", "probe.done"]
    assert hooks_ran == ["after commit"]


def test_a_refused_post_rolls_back_and_skips_the_after_commit_work(db_url: str, org: int) -> None:
    client = portal(db_url)
    sign_in(client, issue(db_url, org))
    before = table_rows(db_url)
    hooks_ran.clear()

    response = client.post("/_probe/refuse", data={"csrf_token": csrf(client)})

    assert response.status_code == 422
    assert "score 9 is out of range 1..5 (field q1)" in response.text
    assert "<html" in response.text  # a page in the layout, not JSON
    assert table_rows(db_url) == before
    assert hooks_ran == []


def test_a_post_whose_commit_fails_is_never_reported_as_done(db_url: str, org: int) -> None:
    client = TestClient(portal(db_url).app, follow_redirects=False, raise_server_exceptions=False)
    sign_in(client, issue(db_url, org))
    before = table_rows(db_url)
    hooks_ran.clear()

    response = client.post(f"/_probe/fails-at-commit/{org}", data={"csrf_token": csrf(client)})

    # The commit runs before the response leaves: the person sees the failure, not "done".
    assert response.status_code == 500
    assert "done" not in response.text
    assert "nothing from this step was saved" in response.text
    assert table_rows(db_url) == before  # the link is still unused
    assert hooks_ran == []


def test_a_session_expires_after_eight_hours(
    db_url: str, org: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = portal(db_url)
    sign_in(client, issue(db_url, org))
    assert client.get("/_probe/me").status_code == 200

    monkeypatch.setenv("PERFCYCLE_NOW", (NOW + security.SESSION_LIFETIME).isoformat())

    assert client.get("/_probe/me").status_code == 401


def test_signing_out_ends_the_session(db_url: str, org: int) -> None:
    client = portal(db_url)
    sign_in(client, issue(db_url, org))

    response = client.post("/auth/sign-out", data={"csrf_token": csrf(client)})

    assert response.status_code == 200
    assert f'{security.SESSION_COOKIE}=""' in response.headers["set-cookie"]
    assert client.get("/_probe/me").status_code == 401


def test_signing_out_ends_the_persons_other_sessions_too(db_url: str, org: int) -> None:
    token = issue(db_url, org)
    laptop, phone, bo = portal(db_url), portal(db_url), portal(db_url)
    sign_in(laptop, token)
    sign_in(phone, token)
    sign_in(bo, issue(db_url, org, person="bo"))
    copied = laptop.cookies[security.SESSION_COOKIE]

    assert laptop.post("/auth/sign-out", data={"csrf_token": csrf(laptop)}).status_code == 200

    # The other device, and a cookie copied before signing out, no longer sign anyone in.
    assert phone.get("/_probe/me").status_code == 401
    thief = portal(db_url)
    thief.cookies.set(security.SESSION_COOKIE, copied)
    assert thief.get("/_probe/me").status_code == 401
    assert thief.get("/").status_code == 200 and "Amy" not in thief.get("/").text
    assert bo.get("/_probe/me").json()["person"] == "bo"  # someone else's session is theirs
    with session_scope(db_url) as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "portal.signed_out")).one()
        assert event.actor == "amy"
    # The dead session does not stand in the way of the person's own link: it signs in afresh.
    sign_in(phone, token)
    assert phone.get("/_probe/me").json()["person"] == "amy"
    assert laptop.get("/_probe/me").status_code == 401


def test_a_person_who_left_cannot_sign_in_with_an_old_link(db_url: str, org: int) -> None:
    token = issue(db_url, org, person="gone")

    assert portal(db_url).get(f"/t/{token}").status_code == 404


# ---------------------------------------------------------------- roles


def test_roles_follow_the_org_chart_and_the_grants(db_url: str, org: int) -> None:
    with session_scope(db_url) as s:
        roles_cli.grant_role(s, "hr1", "hr_admin", actor="test")
        roles_cli.grant_role(s, "BOSS@example.com", "committee", actor="test")

    def roles_of(person: str) -> list[str]:
        client = portal(db_url)
        sign_in(client, issue(db_url, org, person=person))
        return list(client.get("/_probe/me").json()["roles"])

    assert roles_of("amy") == ["employee"]
    assert roles_of("boss") == ["committee", "employee", "manager"]
    assert roles_of("hr1") == ["employee", "hr_admin"]


def test_a_page_for_a_role_refuses_others_naming_the_role(db_url: str, org: int) -> None:
    with session_scope(db_url) as s:
        roles_cli.grant_role(s, "hr1", "hr_admin", actor="test")
    amy, hr = portal(db_url), portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    sign_in(hr, issue(db_url, org, person="hr1"))

    refused = amy.get("/_probe/hr")

    assert refused.status_code == 403
    assert "HR administrator" in refused.text  # amy reads English
    assert hr.get("/_probe/hr").json() == {"person": "hr1"}


def test_require_roles_rejects_unknown_role_names() -> None:
    with pytest.raises(ValueError, match="hr"):
        require_roles("hr")


@pytest.mark.usefixtures("org")
def test_roles_cli_grants_revokes_and_lists_with_audit(db_url: str) -> None:
    with session_scope(db_url) as s:
        assert roles_cli.grant_role(s, "hr1", "auditor", actor="admin") is True
        assert roles_cli.grant_role(s, "hr1", "auditor", actor="admin") is False
        assert roles_cli.grant_role(s, " Ext.Auditor@Example.com ", "auditor", "admin") is True
    with session_scope(db_url) as s:
        listed = roles_cli.role_rows(s)
        assert [(r["principal"], r["role"]) for r in listed] == [
            ("ext.auditor@example.com", "auditor"),
            ("hr1", "auditor"),
        ]
        assert roles_cli.revoke_role(s, "hr1", "auditor", actor="admin") is True
        assert roles_cli.revoke_role(s, "hr1", "auditor", actor="admin") is False
    with session_scope(db_url) as s:
        assert [r.principal for r in s.scalars(select(PortalRole))] == ["ext.auditor@example.com"]
        actions = list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions == ["portal.role_granted"] * 2 + ["portal.role_revoked"]


@pytest.mark.parametrize(
    ("person", "role", "field"),
    [("nobody", "auditor", "PERSON"), ("hr1", "employee", "ROLE"), ("a@b", "auditor", "PERSON")],
)
@pytest.mark.usefixtures("org")
def test_roles_cli_refuses_bad_input_and_changes_nothing(
    db_url: str, person: str, role: str, field: str
) -> None:
    before = table_rows(db_url)
    with session_scope(db_url) as s, pytest.raises(InvalidInput) as info:
        roles_cli.grant_role(s, person, role, actor="admin")
    assert [p.field for p in info.value.problems] == [field]
    assert table_rows(db_url) == before


# ---------------------------------------------------------------- languages


def test_pages_speak_the_viewers_language_and_switch_with_lang(db_url: str, org: int) -> None:
    amy, bo = portal(db_url), portal(db_url)
    sign_in(amy, issue(db_url, org, person="amy"))
    sign_in(bo, issue(db_url, org, person="bo"))

    assert amy.get("/_probe/me").json()["locale"] == "en"
    assert bo.get("/_probe/me").json()["locale"] == "zh-CN"
    assert "退出登录" in bo.get("/auth/sign-in").text

    switched = bo.get("/auth/sign-in?lang=en")
    assert 'lang="en"' in switched.text and "Sign out" in switched.text
    # The choice sticks for the next pages.
    assert bo.get("/_probe/me").json()["locale"] == "en"


def test_an_anonymous_visitor_gets_chinese_unless_asking_for_english(db_url: str) -> None:
    client = TestClient(create_app(db_url))
    assert '<html lang="zh-CN">' in client.get("/auth/new-link").text
    assert '<html lang="en">' in client.get("/auth/new-link?lang=en").text
    assert '<html lang="en">' in client.get("/auth/new-link").text
    assert client.get("/auth/new-link?lang=fr").status_code == 200


def test_every_message_has_both_languages_and_unknown_keys_fail_loudly() -> None:
    assert i18n.translate("sign_out", "en") == "Sign out"
    assert i18n.translate("sign_out", "zh_CN") == "退出登录"
    with pytest.raises(KeyError, match="no.such.key"):
        i18n.translate("no.such.key", "en")
    with pytest.raises(ValueError, match="missing en"):
        i18n.add_messages({"x.only_chinese": {"zh-CN": "中文"}})
    with pytest.raises(ValueError, match="already defined"):
        i18n.add_messages({"sign_out": {"zh-CN": "登出", "en": "Log out"}})


def test_every_problem_code_the_domain_uses_is_worded_in_both_languages() -> None:
    source = "".join(f.read_text(encoding="utf-8") for f in (REPO_ROOT / "perfcycle").rglob("*.py"))
    codes = set(re.findall(r'\bcode="([a-z_]+)"', source))
    assert codes >= {"weights_sum", "locked", "text_length"}
    for code in sorted(codes):
        for locale in i18n.LOCALES:
            worded = i18n.problem_text(Problem("as written", code=code, values=VALUES), locale)
            assert worded != "as written", (code, locale)
    # A code the catalog does not word falls back to the domain's own message.
    assert i18n.problem_text(Problem("as written", code="no_such_code"), "zh-CN") == "as written"


# Every value any problem text may name; unused ones are ignored by str.format.
VALUES = tuple(
    (k, "x")
    for k in (
        "low", "high", "value", "start", "end", "total", "share", "max", "got", "min", "item",
        "score", "manager", "employee",
    )
)


def test_every_page_module_is_wired(db_url: str) -> None:
    modules = {p.stem for p in Path(routes.__file__).parent.glob("*.py")} - {"__init__"}
    routers = {m: importlib.import_module(f"{routes.__name__}.{m}").router for m in modules}
    assert sorted(id(r) for r in routers.values()) == sorted(id(r) for r in ROUTERS)
    client = TestClient(create_app(db_url))
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/auth/sign-in").status_code == 200


def test_pages_carry_security_headers(db_url: str) -> None:
    response = TestClient(create_app(db_url)).get("/auth/sign-in")
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


# ---------------------------------------------------------------- the new-link mail


def ask_for_link(client: TestClient, email: str, path: str = "/auth/new-link") -> Any:
    return client.post(path, data={"csrf_token": csrf(client), "email": email})


@pytest.mark.parametrize("path", ["/auth/new-link", "/auth/sign-in"])
@pytest.mark.usefixtures("org")
def test_asking_for_a_link_mails_exactly_one_that_signs_in(db_url: str, path: str) -> None:
    client = portal(db_url)

    response = ask_for_link(client, "  AMY@example.COM ", path)

    assert response.status_code == 200
    [mail] = outbox_rows(db_url)
    assert (mail.recipient_id, mail.recipient_email, mail.template, mail.locale) == (
        "amy",
        "Amy@Example.com",
        "sign_in_link",
        "en",
    )
    assert mail.context["name"] == "Amy" and mail.context["hours"] == 4
    token = links.token_of(mail.context["link"])
    with session_scope(db_url) as s:
        row = s.scalars(select(TaskToken)).one()
    assert (row.person_id, row.task_kind, row.expires_at) == (
        "amy",
        "sign_in",
        NOW + timedelta(hours=4),
    )
    fresh = portal(db_url)
    assert press_sign_in(fresh, token).headers["location"] == "/"
    assert fresh.get("/_probe/me").json()["person"] == "amy"


@pytest.mark.usefixtures("org")
def test_asking_for_a_link_reveals_nothing_about_unknown_addresses(db_url: str) -> None:
    known = ask_for_link(portal(db_url), "bo@example.com")
    before = table_rows(db_url)

    for email in ("nobody@example.com", "gone@example.com"):
        unknown = ask_for_link(portal(db_url), email)
        assert unknown.status_code == known.status_code == 200
        assert unknown.text.replace(email, "") == known.text.replace("bo@example.com", "")
        assert CSRF_FIELD.sub("", unknown.text) == CSRF_FIELD.sub("", known.text)
    assert table_rows(db_url) == before


@pytest.mark.usefixtures("org")
def test_asking_for_links_is_rate_limited_per_address(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = portal(db_url)
    for _ in range(5):
        assert ask_for_link(client, "bo@example.com").status_code == 200
    assert len(outbox_rows(db_url)) == 3
    ask_for_link(client, "amy@example.com")
    assert len(outbox_rows(db_url)) == 4

    monkeypatch.setenv("PERFCYCLE_NOW", (NOW + timedelta(hours=1, seconds=1)).isoformat())
    ask_for_link(portal(db_url), "bo@example.com")
    assert len(outbox_rows(db_url)) == 5


@pytest.mark.usefixtures("org")
def test_a_malformed_address_is_said_so_and_changes_nothing(db_url: str) -> None:
    before = table_rows(db_url)
    response = ask_for_link(portal(db_url), "not an address")
    assert response.status_code == 422
    assert "请输入有效的邮箱地址" in response.text
    assert table_rows(db_url) == before
