"""The local stack (`perfcycle up`): Prefect, the portal and the mail sink, started and stopped."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.devtools.devstack import (
    Ports,
    Stack,
    StackError,
    absolute_database_url,
    pick_free_ports,
)
from perfcycle.domain.models import Cycle, Department, Employee
from perfcycle.notifications.links import issue_link, token_of
from perfcycle.notifications.mailsink import list_messages
from perfcycle.web.app import create_app


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), response.read().decode()


def status_of(url: str) -> int:
    """The status of a GET, redirects not followed."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", parts.path)
        return connection.getresponse().status
    finally:
        connection.close()


def live_members(pgids: set[int]) -> list[str]:
    """Processes (not zombies) in any of the groups, read from /proc: independent of the stack."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name_end = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = name_end[1].split()
        if int(fields[2]) in pgids and fields[0] != "Z":
            found.append(f"{stat.parent.name} {name_end[0]})")
    return found


def add_cycle(session: Session, policy: str, period: str) -> None:
    session.add(
        Cycle(
            policy=policy,
            policy_digest="0" * 64,
            period=period,
            period_start=date(2026, 10, 1),
            period_end=date(2026, 12, 31),
            scope_key="",
            start_date=date(2026, 10, 1),
            state="running",
            created_at=datetime(2026, 10, 1, tzinfo=UTC),
        )
    )


def send_mail(port: int) -> None:
    msg = EmailMessage()
    msg["From"] = "perfcycle@localhost"
    msg["To"] = "li.lei@example.com"
    msg["Subject"] = "stack check"
    msg.set_content("plain")
    msg.add_alternative("<p>html</p>", subtype="html")
    asyncio.run(aiosmtplib.send(msg, hostname="127.0.0.1", port=port, timeout=10))


@pytest.mark.prefect
@pytest.mark.timeout(120)
def test_stack_serves_everything_and_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERFCYCLE_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    with Stack(home, free_ports=True, with_flows=False) as stack:
        pgids = {child.pgid for child in stack.children.values()}
        leaders = [child.process.pid for child in stack.children.values()]
        assert set(stack.children) == {"prefect", "portal", "mail"}
        urls = stack.urls

        assert get(f"{urls['prefect_api']}/health") == (200, "true")
        status, ui = get(urls["prefect_ui"])
        assert status == 200 and "<html" in ui.lower()
        status, body = get(f"{urls['portal']}/healthz")
        assert (status, json.loads(body)) == (200, {"ok": True})

        # Migrated before start, and the portal child reads the same database: a link stored
        # here signs in there, a made-up one does not.
        with session_scope(stack.database_url) as session:
            session.add(Department(id="cs", name="Customer service", type="external_service"))
            session.add(
                Employee(id="e1", name="Li Lei", email="li.lei@example.com", department_id="cs")
            )
            session.flush()
            link = issue_link(
                session, "e1", None, "sign_in", "sign_in", datetime.now(UTC) + timedelta(hours=1)
            )
        # A sign-in link shows its button (a GET never spends it; the POST does).
        status, page = get(f"{urls['portal']}/t/{token_of(link)}")
        assert status == 200 and f'action="/t/{token_of(link)}"' in page
        assert status_of(f"{urls['portal']}/t/made-up-token") == 404
        status, page = get(urls["portal"])
        assert status == 200 and 'href="/auth/new-link"' in page

        send_mail(stack.ports.mail)
        [stored] = list_messages(stack.mail_dir)
        assert stored.subject == "stack check" and stored.to == "li.lei@example.com"

        env = stack.env
        assert env["PREFECT_API_URL"] == urls["prefect_api"]
        assert env["PERFCYCLE_SMTP_PORT"] == str(stack.ports.mail)
        assert env["PERFCYCLE_DATABASE_URL"] == f"sqlite:///{home.resolve() / 'perfcycle.db'}"

    assert live_members(pgids) == []
    for pid in leaders:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert (home / "prefect").is_dir()  # the Prefect server's own database lives in the home
    assert {p.name for p in (home / "logs").iterdir()} == {"prefect.log", "portal.log", "mail.log"}


def test_taken_port_fails_naming_port_and_service(tmp_path: Path) -> None:
    prefect_port, portal_port, mail_port = pick_free_ports(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", portal_port))
        holder.listen()
        stack = Stack(tmp_path / "home", ports=Ports(prefect_port, portal_port, mail_port))
        with pytest.raises(StackError, match=f"port {portal_port} \\(portal\\) is already in use"):
            stack.start()
    assert stack.children == {}
    assert not (tmp_path / "home").exists()  # failed before touching anything


def test_relative_sqlite_url_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_database_url("sqlite:///data/pc.db") == f"sqlite:///{tmp_path}/data/pc.db"
    assert absolute_database_url("sqlite:////abs/pc.db") == "sqlite:////abs/pc.db"
    pg = "postgresql+psycopg://u:secret@127.0.0.1:5432/perfcycle"
    assert absolute_database_url(pg) == pg


def test_portal_home_tells_anonymous_visitors_how_to_sign_in_and_no_cycles(
    db_url: str, session: Session
) -> None:
    add_cycle(session, "internal_service", "2026-Q3")
    session.commit()
    client = TestClient(create_app(db_url))
    page = client.get("/?lang=en")
    assert page.status_code == 200
    assert "<title>Performance portal · perfcycle</title>" in page.text
    assert "Your tasks arrive by email" in page.text and 'href="/auth/new-link"' in page.text
    # The placeholder listed every cycle to anyone; the page now says nothing about them.
    assert "internal_service" not in page.text and "2026-Q3" not in page.text
    assert client.get("/healthz").json() == {"ok": True}


def test_portal_home_says_when_database_is_unreachable(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path}/never-migrated.db"
    client = TestClient(create_app(empty))
    page = client.get("/?lang=en")
    assert page.status_code == 200
    assert "The database is not reachable" in page.text
    assert "no such table: cycles" in page.text
    assert "数据库不可用" in client.get("/?lang=zh-CN").text
    assert client.get("/healthz").json() == {"ok": True}
