"""Driving the portal through HTTP on a real demo cycle: start it, sign in with a real task
link, read a page's CSRF token, post its form."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain.models import Employee, Goal, Participant, PortalRole, RaterAssignment
from perfcycle.notifications import links
from perfcycle.web import i18n
from perfcycle.web.app import create_app
from tests.support import databases
from tests.support.cycle import DemoOrg, play_until_waiting_at, prepare_demo_org

PERIOD = "2026-Q4"
POLICY = "external-service"
T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def use_policy(folder: Path, monkeypatch: pytest.MonkeyPatch, raters: dict[str, Any]) -> None:
    """The shipped policies, with the external-service rater counts changed."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (REPO_ROOT / "policies").glob("*.yaml"):
        source = path.read_text(encoding="utf-8")
        if path.stem == POLICY:
            data = yaml.safe_load(source)
            for rater_type, count in raters.items():
                data["raters"][rater_type]["count"] = count
            source = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        (folder / path.name).write_text(source, encoding="utf-8")
    monkeypatch.setenv("PERFCYCLE_POLICIES_DIR", str(folder))
    get_settings.cache_clear()


def start_cycle(url: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    org = prepare_demo_org(url, folder)
    return launch_at_t0(url, org, monkeypatch)


def launch_at_t0(url: str, org: DemoOrg, monkeypatch: pytest.MonkeyPatch) -> int:
    return databases.start_demo_cycle(url, org, monkeypatch, POLICY, PERIOD, T0)


def portal(url: str) -> TestClient:
    return TestClient(create_app(url), follow_redirects=False)


def signed_in(url: str, person: str, cycle_id: int, kind: str, ref: str) -> TestClient:
    """A browser that opened `person`'s task link."""
    with session_scope(url) as s:
        link = links.issue_link(s, person, cycle_id, kind, ref, T0 + timedelta(days=90))
    client = portal(url)
    response = client.get(f"/t/{links.token_of(link)}")
    assert response.status_code == 303, response.text
    return client


def csrf_of(page: str) -> str:
    found = CSRF_FIELD.search(page)
    assert found, page
    return found.group(1)


def grant(url: str, person: str, role: str) -> None:
    with session_scope(url) as s:
        s.add(PortalRole(principal=person, role=role, granted_by="test", granted_at=T0))


def t(key: str, **values: Any) -> str:
    """Catalog text in zh-CN, the demo organisation's language for most people."""
    return i18n.translate(key, "zh-CN", **values)


def goal_states(url: str, cycle_id: int, person: str) -> set[tuple[str, bool, bool]]:
    with session_scope(url) as s:
        goals = s.scalars(select(Goal).where(Goal.cycle_id == cycle_id, Goal.employee_id == person))
        return {
            (g.state, g.employee_signed_at is not None, g.manager_signed_at is not None)
            for g in goals
        }


def first_report(url: str, cycle_id: int) -> tuple[str, str]:
    """(employee, manager) of a participant with a manager, in id order."""
    with session_scope(url) as s:
        row = s.execute(
            select(Participant.employee_id, Participant.manager_id)
            .where(Participant.cycle_id == cycle_id, Participant.manager_id.is_not(None))
            .order_by(Participant.employee_id)
        ).first()
        assert row is not None
        return row.employee_id, str(row.manager_id)


def at_evaluation(url: str, cycle_id: int) -> None:
    assert play_until_waiting_at(url, cycle_id, "evaluation").next == "people"


def error_of(page: str, item: str) -> str:
    """The error shown next to one item of an evaluation form."""
    assert f'id="error-{item}"' in page, f"no error next to {item}"
    return page.split(f'id="error-{item}"')[1].split("</p>")[0]


def form_of(answers: dict[str, tuple[int | str, str]], token: str) -> dict[str, Any]:
    data: dict[str, Any] = {"csrf_token": token}
    for item, (score, comment) in answers.items():
        data[f"score.{item}"] = str(score)
        data[f"comment.{item}"] = comment
    return data


def state_of(url: str, assignment_id: int) -> str:
    with session_scope(url) as s:
        found = s.get(RaterAssignment, assignment_id)
        assert found is not None
        return found.state


def outsider(url: str, cycle_id: int) -> str:
    """An active employee who takes part in the cycle in no way (not even as a manager)."""
    with session_scope(url) as s:
        rows = s.execute(
            select(Participant.employee_id, Participant.manager_id).where(
                Participant.cycle_id == cycle_id
            )
        ).tuples()
        involved = {person for row in rows for person in row}
        return next(
            e for e in s.scalars(select(Employee.id).order_by(Employee.id)) if e not in involved
        )
