"""Every task kind a whole demo cycle hands out is registered, and every kind with a page lands,
signed in by a real link, on that page (200) for its person. Kinds waiting for their pages are
listed here: the issue that adds a page moves its kind out of WAITING_FOR_PAGES."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import Employee, TaskToken
from perfcycle.notifications import links, task_kinds
from perfcycle.notifications.task_kinds import TASK_KINDS
from tests.support.cycle import launch, play_whole_cycle, prepare_demo_org
from tests.support.factories import freeze
from tests.support.portal import POLICY, T0, csrf_of, portal
from tests.support.task_kinds import declared_kinds

# The interview, improvement-plan and appeal pages come with the next issue's journeys; until
# then their links sign the person in and land on the home page.
WAITING_FOR_PAGES = {
    "interview",
    "interviews",
    "interview_ack",
    "improvement_plan",
    "improvement_checkin",
    "appeal",
}


def test_the_kinds_waiting_for_pages_are_exactly_those_without_one() -> None:
    assert {kind for kind, entry in TASK_KINDS.items() if entry.page is None} == WAITING_FOR_PAGES


def test_every_kind_of_a_whole_cycle_is_registered_and_lands_on_its_page(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = prepare_demo_org(db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    freeze(monkeypatch, T0)
    cycle_id = launch(db_url, POLICY, "2026-Q4")
    play_whole_cycle(db_url, cycle_id)
    with session_scope(db_url) as s:
        handed_out = {
            row.task_kind: (row.person_id, row.task_ref)
            for row in s.scalars(select(TaskToken).order_by(TaskToken.id.desc()))
        }
        anyone = s.scalars(select(Employee.id).where(Employee.active)).first()
    assert anyone is not None

    declared = {kind for pairs in declared_kinds().values() for kind, _ in pairs}
    assert set(handed_out) <= set(TASK_KINDS), "a link of an unregistered kind"
    assert declared <= set(TASK_KINDS)
    # The cycle exercised the kinds that have pages, or the landing checks below prove little.
    with_pages = {k for k, e in TASK_KINDS.items() if e.page is not None} - {task_kinds.SIGN_IN}
    assert with_pages <= set(handed_out)

    for kind in sorted(TASK_KINDS):
        person, ref = handed_out.get(kind, (anyone, f"test:{kind}"))
        cycle = None if kind == task_kinds.SIGN_IN else cycle_id
        landed = land(db_url, person, cycle, kind, ref)
        expected = task_kinds.landing(kind, cycle)
        assert landed == expected, kind


def land(url: str, person: str, cycle_id: int | None, kind: str, ref: str) -> str:
    """Open a fresh link of the kind for the person; the page it lands on, checked to be 200."""
    with session_scope(url) as s:
        link = links.issue_link(s, person, cycle_id, kind, ref, T0 + timedelta(days=90))
    client = portal(url)
    token = links.token_of(link)
    response = client.get(f"/t/{token}")
    if kind == task_kinds.SIGN_IN:
        # A sign-in link asks for a button press (mail scanners open links too).
        assert response.status_code == 200, response.text
        response = client.post(f"/t/{token}", data={"csrf_token": csrf_of(response.text)})
    assert response.status_code == 303, (kind, response.text)
    target = response.headers["location"]
    page = client.get(target)
    assert page.status_code == 200, (kind, target, page.text[:500])
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")
