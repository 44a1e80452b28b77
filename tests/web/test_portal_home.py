"""The home page `/`: the signed-in person's open tasks across running cycles, and where to go.

Driven through HTTP on real demo cycles (tests/web/test_portal_pages.py's helpers): the tasks are
produced by the engine and the stage handlers, completed with the domain functions, and every
link the page shows is followed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import Cycle, Employee, Participant, RaterAssignment
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import submit_evaluation
from perfcycle.domain.stages.target_setting import submit_goals
from perfcycle.web import i18n, security
from perfcycle.web.app import create_app
from tests.support import databases
from tests.support.cycle import full_answers, launch, run_until_wait
from tests.support.factories import freeze
from tests.support.portal import (
    POLICY,
    at_evaluation,
    first_report,
    grant,
    outsider,
    portal,
    signed_in,
    start_cycle,
    t,
)

NEXT_PERIOD = "2027-Q1"
LINK = re.compile(r'<a (?:id="[^"]+" )?href="([^"]+)"')


@pytest.fixture
def goals_cycle(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started_cycle: databases.StartedCycle,
) -> Iterator[int]:
    """The demo organisation in an external-service cycle waiting at target_setting."""
    yield databases.use_started(started_cycle, db_url, tmp_path, monkeypatch)
    get_settings.cache_clear()


def en(key: str, **values: object) -> str:
    return i18n.translate(key, "en", **values)


def section(page: str, cycle_id: int) -> str:
    """The home page's card of one cycle ('' when the page has none)."""
    parts = page.split(f'id="cycle-{cycle_id}"')
    return parts[1].split("</section>")[0] if len(parts) > 1 else ""


def task_item(page: str, action: str) -> str:
    """The <li> of the first task with this action ('' when there is none)."""
    parts = page.split(f'data-action="{action}"')
    return parts[1].split("</li>")[0] if len(parts) > 1 else ""


def links_in(html: str) -> list[str]:
    return LINK.findall(html)


def due_text(url: str, cycle_id: int, stage: str, lang: str = "zh-CN") -> str:
    with session_scope(url) as s:
        due = engine.stage_instances(s, cycle_id)[stage].due_at
    when = due.strftime("%Y-%m-%d %H:%M UTC")
    return i18n.translate("pages.due_at", lang, when=when)


def names(url: str, ids: set[str]) -> list[str]:
    with session_scope(url) as s:
        return list(s.scalars(select(Employee.name).where(Employee.id.in_(sorted(ids)))))


def pending_assignments(url: str, cycle_id: int, rater: str) -> list[RaterAssignment]:
    with session_scope(url) as s:
        return list(
            s.scalars(
                select(RaterAssignment).where(
                    RaterAssignment.cycle_id == cycle_id,
                    RaterAssignment.rater_id == rater,
                    RaterAssignment.state == "pending",
                )
            )
        )


def rater_without_reports(url: str, evaluating: int, goal_setting: int) -> str:
    """A peer rater of `evaluating` who sets goals in `goal_setting` and manages nobody there."""
    with session_scope(url) as s:
        managers = set(
            s.scalars(
                select(Participant.manager_id).where(
                    Participant.cycle_id == goal_setting, Participant.manager_id.is_not(None)
                )
            )
        )
        setting = set(
            s.scalars(select(Participant.employee_id).where(Participant.cycle_id == goal_setting))
        )
        raters = s.scalars(
            select(RaterAssignment.rater_id)
            .where(RaterAssignment.cycle_id == evaluating, RaterAssignment.rater_type == "peer")
            .order_by(RaterAssignment.rater_id)
        )
        return next(r for r in raters if r in setting and r not in managers)


def a_second_cycle_at_target_setting(url: str) -> int:
    """Another cycle of the same people, waiting at target_setting (tasks in two cycles)."""
    cycle_id = launch(url, POLICY, NEXT_PERIOD, run_id="run-2")
    assert run_until_wait(url, cycle_id).stage == "target_setting"
    return cycle_id


# ---------------------------------------------------------------- tasks and their links


def tasks_in_two_cycles(url: str, evaluating: int) -> None:
    at_evaluation(url, evaluating)
    setting = a_second_cycle_at_target_setting(url)
    person = rater_without_reports(url, evaluating, setting)
    mine = pending_assignments(url, evaluating, person)
    client = signed_in(url, person, evaluating, "evaluation", "evaluation:1")

    page = client.get("/")
    assert page.status_code == 200
    assert f"<title>{t('home.title')}" in page.text
    rating = section(page.text, evaluating)
    goals = section(page.text, setting)
    with session_scope(url) as s:
        periods = {c.id: c.period for c in s.scalars(select(Cycle))}
    assert t("pages.cycle_label", id=evaluating, period=periods[evaluating]) in rating
    assert t("pages.cycle_label", id=setting, period=periods[setting]) in goals
    # What to do, by when, and where: the ratees are named (up to five of them).
    ratees = names(url, {a.ratee_id for a in mine})
    shown = [n for n in ratees if n in rating]
    assert len(shown) == min(len(ratees), 5), (ratees, rating)
    assert due_text(url, evaluating, "evaluation") in rating
    assert links_in(rating) == [f"/evaluations?cycle={evaluating}"]
    assert "确认并提交本期绩效目标" in goals
    assert due_text(url, setting, "target_setting") in goals
    assert links_in(goals) == [f"/goals?cycle={setting}"]
    assert t("home.nothing") not in page.text and t("home.overdue") not in page.text
    for href in links_in(rating) + links_in(goals):
        assert client.get(href).status_code == 200, href

    with session_scope(url) as s:
        for a in mine:
            answers = full_answers(s, a)
            policy = cycle_policy(engine.get_cycle(s, evaluating))
            submit_evaluation(s, a.id, answers, Actor.person(person), policy)
    page = client.get("/")
    assert section(page.text, evaluating) == ""
    assert f"/evaluations?cycle={evaluating}" not in page.text
    assert section(page.text, setting) != ""

    with session_scope(url) as s:
        submit_goals(s, setting, person, actor=Actor.person(person))
    page = client.get("/")
    assert section(page.text, setting) == "" and 'data-action="' not in page.text
    assert t("home.nothing") in page.text


def test_an_employee_sees_evaluations_and_goals_with_deadlines_links_until_done(
    db_url: str, goals_cycle: int
) -> None:
    tasks_in_two_cycles(db_url, goals_cycle)


def test_tasks_in_two_cycles_on_postgresql(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cycle_id = start_cycle(pg_url, tmp_path, monkeypatch)
    tasks_in_two_cycles(pg_url, cycle_id)
    get_settings.cache_clear()


def test_a_manager_is_asked_to_approve_once_a_report_submitted(
    db_url: str, goals_cycle: int
) -> None:
    employee, manager = first_report(db_url, goals_cycle)
    [employee_name] = names(db_url, {employee})
    boss = signed_in(db_url, manager, goals_cycle, "goals_approval", "target_setting:1")
    before = boss.get("/").text
    assert task_item(before, "approve_goals") == ""
    # Their team's goals are one click away all the same.
    assert f'id="place-team-{goals_cycle}" href="/goals?cycle={goals_cycle}"' in before

    with session_scope(db_url) as s:
        submit_goals(s, goals_cycle, employee, actor=Actor.person(employee))
    after = boss.get("/").text
    approve = task_item(after, "approve_goals")
    assert f"审批{employee_name}的绩效目标" in approve
    assert links_in(approve) == [f"/goals?cycle={goals_cycle}"]
    assert boss.get(f"/goals?cycle={goals_cycle}").status_code == 200
    # The employee's own list no longer has the goals to sign.
    me = signed_in(db_url, employee, goals_cycle, "goals", "target_setting:1")
    assert task_item(me.get("/").text, "submit_goals") == ""


def test_a_deadline_passed_is_marked_overdue(
    db_url: str, goals_cycle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    employee, _ = first_report(db_url, goals_cycle)
    client = signed_in(db_url, employee, goals_cycle, "goals", "target_setting:1")
    with session_scope(db_url) as s:
        due = engine.stage_instances(s, goals_cycle)["target_setting"].due_at
    on_time = task_item(client.get("/").text, "submit_goals")
    assert on_time and t("home.overdue") not in on_time and "state-overdue" not in on_time

    freeze(monkeypatch, due + timedelta(hours=1))
    assert clock.now() > due
    # A session lasts less than the stage: sign in again, as a late employee would.
    client = signed_in(db_url, employee, goals_cycle, "goals", "target_setting:1")
    late = task_item(client.get("/").text, "submit_goals")
    assert t("home.overdue") in late and 'class="due state-overdue"' in late


def test_someone_with_nothing_to_do_is_told_so(db_url: str, goals_cycle: int) -> None:
    person = outsider(db_url, goals_cycle)
    client = signed_in(db_url, person, goals_cycle, "goals", "target_setting:1")
    page = client.get("/")
    assert page.status_code == 200
    assert t("home.nothing") in page.text
    assert 'data-action="' not in page.text and 'id="cycle-' not in page.text
    # Taking part in no cycle, they have no transparency page to go to either.
    assert 'id="place-me"' not in page.text


# ---------------------------------------------------------------- where else to go, by role


def test_links_to_other_pages_follow_the_persons_roles(db_url: str, goals_cycle: int) -> None:
    employee, _ = first_report(db_url, goals_cycle)
    hr_person, auditor = outsider(db_url, goals_cycle), employee
    grant(db_url, hr_person, "hr_admin")
    plain = signed_in(db_url, employee, goals_cycle, "goals", "target_setting:1")
    hr = signed_in(db_url, hr_person, goals_cycle, "goals", "target_setting:1")

    page = plain.get("/").text
    assert 'id="place-me" href="/me"' in page and plain.get("/me").status_code == 200
    assert 'href="/hr/cycles"' not in page and 'href="/audit"' not in page
    assert plain.get("/hr/cycles").status_code == 403

    page = hr.get("/").text
    assert 'id="place-hr" href="/hr/cycles"' in page and 'id="place-audit" href="/audit"' in page
    assert 'id="place-prefect"' in page
    assert hr.get("/hr/cycles").status_code == 200 and hr.get("/audit").status_code == 200

    grant(db_url, auditor, "auditor")
    page = plain.get("/").text
    assert 'href="/audit"' in page and 'id="place-hr" href="/hr/cycles"' in page
    assert 'id="place-prefect"' not in page
    assert plain.get("/audit").status_code == 200 and plain.get("/hr/cycles").status_code == 200


# ---------------------------------------------------------------- anonymous visitors


def test_an_anonymous_visitor_gets_the_sign_in_pointer_and_no_cycle_data(
    db_url: str, goals_cycle: int
) -> None:
    with session_scope(db_url) as s:
        cycle = engine.get_cycle(s, goals_cycle)
        policy = cycle_policy(cycle)
        revealing = [cycle.period, cycle.policy, policy.title.get("zh-CN"), policy.title.get("en")]
    forged = TestClient(create_app(db_url), follow_redirects=False)
    forged.cookies.set(security.SESSION_COOKIE, "not-a-signed-session")
    for visitor in (portal(db_url), forged):
        page = visitor.get("/")
        assert page.status_code == 200
        assert t("home_intro") in page.text
        assert 'href="/auth/new-link"' in page.text
        assert visitor.get("/auth/new-link").status_code == 200
        assert not [text for text in revealing if text in page.text]
        assert "cycle=" not in page.text and 'data-action="' not in page.text


# ---------------------------------------------------------------- languages


def test_the_page_speaks_the_persons_language_or_the_one_chosen(
    db_url: str, goals_cycle: int
) -> None:
    employee, _ = first_report(db_url, goals_cycle)
    client = signed_in(db_url, employee, goals_cycle, "goals", "target_setting:1")
    chinese = client.get("/").text
    assert t("home.title") in chinese and "确认并提交本期绩效目标" in chinese
    assert due_text(db_url, goals_cycle, "target_setting") in chinese

    english = client.get("/?lang=en").text
    assert en("home.title") in english and "Review and submit your goals" in english
    assert due_text(db_url, goals_cycle, "target_setting", "en") in english
    assert t("home.title") not in english

    with session_scope(db_url) as s:
        person = s.get(Employee, employee)
        assert person is not None
        person.locale = "en-GB"
    fresh = signed_in(db_url, employee, goals_cycle, "goals", "target_setting:1")
    assert en("home.title") in fresh.get("/").text


# ---------------------------------------------------------------- without a database


def test_a_signed_in_person_is_told_when_the_database_is_not_usable(tmp_path: Path) -> None:
    client = TestClient(create_app(f"sqlite:///{tmp_path}/never-migrated.db"))
    client.cookies.set(
        security.SESSION_COOKIE, security.encode_session(security.new_session("E0002", clock.now()))
    )
    page = client.get("/?lang=en")
    assert page.status_code == 200
    assert en("home.db_down") in page.text and "no such table: employees" in page.text
