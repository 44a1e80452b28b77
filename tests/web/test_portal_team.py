"""Each role sees only what it may: a manager their reports' pages and a "My team" list, HR and
auditors everyone's page read-only, auditors HR's progress pages without its forms.

Driven through HTTP on a real demo cycle (tests/web/test_portal_pages.py's helpers); the cycle is
played with the domain functions, and every link a page shows is followed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Cycle,
    Employee,
    Goal,
    OutboxMessage,
    Participant,
    RaterAssignment,
    Result,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import submit_evaluation
from perfcycle.domain.stages.target_setting import submit_goals
from perfcycle.web import security
from tests.support import databases
from tests.support.cycle import decide, full_answers, play_until_waiting_at, run_until_wait
from tests.support.factories import name_of
from tests.support.portal import (
    at_evaluation,
    csrf_of,
    first_report,
    grant,
    outsider,
    signed_in,
    start_cycle,
    t,
    use_policy,
)

LINK = re.compile(r'href="([^"]+)"')


@pytest.fixture
def cycle(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started_cycle: databases.StartedCycle,
) -> Iterator[int]:
    """The demo organisation in an external-service cycle waiting at target_setting."""
    yield databases.use_started(started_cycle, db_url, tmp_path, monkeypatch)
    get_settings.cache_clear()


@pytest.fixture
def three_recipients(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Like `cycle`, with three service recipients per person: that rater group reaches the
    anonymity threshold (3), the others (one or two raters) stay hidden."""
    use_policy(tmp_path / "policies", monkeypatch, {"service_recipient": 3})
    yield start_cycle(db_url, tmp_path, monkeypatch)
    get_settings.cache_clear()


# ---------------------------------------------------------------- helpers


def browser(url: str, person: str, cycle_id: int) -> TestClient:
    """`person` signed in, reading Chinese (t() is zh-CN) whatever their own locale."""
    client = signed_in(url, person, cycle_id, "goals", "target_setting:1")
    client.cookies.set(security.LANG_COOKIE, "zh-CN")
    return client


def page_of(employee: str, cycle_id: int) -> str:
    return f"/me?cycle={cycle_id}&employee={employee}"


def main(html: str) -> str:
    """The page's own content, without the header (whose sign-out form every page has)."""
    return html.split("<main>")[1].split("</main>")[0]


def card(html: str, section_id: str) -> str:
    parts = html.split(f'<section class="card" id="{section_id}">')
    assert len(parts) == 2, f"no section {section_id}"
    return parts[1].split("</section>")[0]


def goal_titles(url: str, cycle_id: int, person: str) -> list[str]:
    with session_scope(url) as s:
        return list(
            s.scalars(
                select(Goal.title).where(Goal.cycle_id == cycle_id, Goal.employee_id == person)
            )
        )


def reports_of(url: str, cycle_id: int, manager: str) -> list[str]:
    with session_scope(url) as s:
        return list(
            s.scalars(
                select(Participant.employee_id)
                .where(Participant.cycle_id == cycle_id, Participant.manager_id == manager)
                .order_by(Participant.employee_id)
            )
        )


def managers_in(url: str, cycle_id: int) -> set[str]:
    with session_scope(url) as s:
        return {
            m
            for m in s.scalars(
                select(Participant.manager_id).where(Participant.cycle_id == cycle_id)
            )
            if m is not None
        }


def colleagues(url: str, cycle_id: int) -> tuple[str, str, str]:
    """(employee, colleague, their manager): two reports of one manager who manage nobody."""
    managers = managers_in(url, cycle_id)
    for manager in sorted(managers):
        plain = [r for r in reports_of(url, cycle_id, manager) if r not in managers]
        if len(plain) >= 2:
            return plain[0], plain[1], manager
    raise AssertionError("no manager with two reports")


def not_managed_by(url: str, cycle_id: int, manager: str) -> str:
    """A participant whom `manager` does not manage in the cycle (and who is not them)."""
    with session_scope(url) as s:
        rows = s.execute(
            select(Participant.employee_id, Participant.manager_id)
            .where(Participant.cycle_id == cycle_id)
            .order_by(Participant.employee_id.desc())
        ).tuples()
        return next(e for e, m in rows if e != manager and m != manager)


def comment_for(a: RaterAssignment) -> str:
    return f"only-for-the-ratee-{a.id}"


def release_results(url: str, cycle_id: int) -> None:
    """Every rater answers (each with a comment of their own), calibration approves, results are
    released; the cycle runs on."""
    at_evaluation(url, cycle_id)
    with session_scope(url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
        pending = s.scalars(
            select(RaterAssignment).where(
                RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending"
            )
        ).all()
        for a in pending:
            answers = full_answers(s, a, comment=comment_for(a))
            submit_evaluation(s, a.id, answers, Actor.person(a.rater_id), policy)
    assert play_until_waiting_at(url, cycle_id, "calibration").next == "approval"
    decide(url, cycle_id, decision="approve", approver="committee")
    run_until_wait(url, cycle_id)


def result_of(url: str, cycle_id: int, person: str) -> tuple[str, float]:
    with session_scope(url) as s:
        r = s.scalar(
            select(Result).where(Result.cycle_id == cycle_id, Result.employee_id == person)
        )
        assert r is not None and r.released_at is not None
        return r.grade, r.total


def all_comments(url: str, cycle_id: int, ratee: str) -> list[str]:
    with session_scope(url) as s:
        return [
            comment_for(a)
            for a in s.scalars(
                select(RaterAssignment).where(
                    RaterAssignment.cycle_id == cycle_id, RaterAssignment.ratee_id == ratee
                )
            )
        ]


def assert_refused(response_text: str, status_code: int, person_name: str) -> None:
    assert status_code == 403
    assert t("me.forbidden") in response_text
    assert person_name not in response_text
    assert 'id="goals"' not in response_text and 'id="scores"' not in response_text


# ---------------------------------------------------------------- 1. a manager and their reports


def test_a_manager_reads_a_reports_page_exactly_as_the_report_sees_it(
    db_url: str, three_recipients: int
) -> None:
    cycle = three_recipients
    employee, manager = first_report(db_url, cycle)
    name = name_of(db_url, employee)
    boss = browser(db_url, manager, cycle)

    before = boss.get(page_of(employee, cycle))
    assert before.status_code == 200
    banner = before.text.split('id="viewing-as"')[1].split("</p>")[0]
    assert 'data-capacity="manager"' in banner
    assert t("me.viewing.manager", name=name, id=employee) in banner
    assert f"<h1>{t('me.other.title', name=name)}</h1>" in before.text
    titles = goal_titles(db_url, cycle, employee)
    assert titles and all(title in card(before.text, "goals") for title in titles)
    assert t("me.other.not_released") in card(before.text, "scores")
    assert "<form" not in main(before.text)

    release_results(db_url, cycle)
    grade, total = result_of(db_url, cycle, employee)
    after = boss.get(page_of(employee, cycle))
    assert after.status_code == 200
    assert t("me.grade", grade=grade) in card(after.text, "scores")
    assert t("me.total", total=f"{total:.1f}") in card(after.text, "scores")
    assert "<form" not in main(after.text)
    # Raters stay anonymous: groups only as aggregates at the threshold, and no individual
    # answer (here: each rater's own comment) anywhere.
    raters = card(after.text, "raters")
    shown = raters.split('id="group-service_recipient"')[1].split("</article>")[0]
    assert t("me.answered", n=3) in shown and 'class="mean"' in shown
    superior = raters.split('id="group-superior"')[1].split("</article>")[0]
    assert t("me.too_few") in superior and 'class="mean"' not in superior
    comments = all_comments(db_url, cycle, employee)
    assert comments and not [c for c in comments if c in after.text]

    # Never more than the report sees: the evidence, scores and rater groups are their own page's.
    own = browser(db_url, employee, cycle).get(f"/me?cycle={cycle}")
    assert own.status_code == 200 and 'id="viewing-as"' not in own.text
    for section in ("metrics", "scores", "raters"):
        assert card(after.text, section) == card(own.text, section), section
    goals_table = card(own.text, "goals").split("</h2>")[1]
    assert card(after.text, "goals").split("</h2>")[1] == goals_table

    # The home page lists the report with the grade and a link that opens the same page.
    home = boss.get("/").text
    row = home.split(f'id="team-{cycle}-{employee}"')[1].split("</tr>")[0]
    assert name in row and f'<td class="grade-cell">{grade}</td>' in row
    [href] = LINK.findall(row)
    assert href.replace("&amp;", "&") == page_of(employee, cycle)
    assert boss.get(href.replace("&amp;", "&")).text == after.text


def test_a_manager_cannot_open_the_page_of_someone_they_do_not_manage(
    db_url: str, cycle: int
) -> None:
    employee, manager = first_report(db_url, cycle)
    stranger = not_managed_by(db_url, cycle, manager)
    release_results(db_url, cycle)
    grade, total = result_of(db_url, cycle, stranger)
    boss = browser(db_url, manager, cycle)

    refused = boss.get(page_of(stranger, cycle))
    assert_refused(refused.text, refused.status_code, name_of(db_url, stranger))
    assert t("me.grade", grade=grade) not in refused.text
    assert t("me.total", total=f"{total:.1f}") not in refused.text
    # Not by leaving out the cycle either, nor by asking for a cycle the stranger is not in.
    assert boss.get(f"/me?employee={stranger}").status_code == 403
    assert boss.get(page_of(stranger, 999)).status_code == 404  # no such cycle: says nothing
    # Their own report still opens, with the grade.
    mine = boss.get(page_of(employee, cycle))
    assert mine.status_code == 200
    assert t("me.grade", grade=result_of(db_url, cycle, employee)[0]) in mine.text


def test_an_employee_cannot_open_a_colleagues_or_their_managers_page(
    db_url: str, cycle: int
) -> None:
    employee, colleague, manager = colleagues(db_url, cycle)
    me = browser(db_url, employee, cycle)
    for other in (colleague, manager):
        refused = me.get(page_of(other, cycle))
        assert_refused(refused.text, refused.status_code, name_of(db_url, other))
    # Their own page, asked for by their own id, is simply their page.
    own = me.get(page_of(employee, cycle))
    assert own.status_code == 200 and 'id="viewing-as"' not in own.text
    assert f"<h1>{t('me.title')}</h1>" in own.text


def test_the_manager_the_cycle_recorded_decides_not_todays_org_chart(
    db_url: str, cycle: int
) -> None:
    employee, manager = first_report(db_url, cycle)
    newcomer = outsider(db_url, cycle)
    with session_scope(db_url) as s:
        person = s.get(Employee, employee)
        assert person is not None
        person.manager_id = newcomer  # a reorganisation after the cycle was launched
    refused = browser(db_url, newcomer, cycle).get(page_of(employee, cycle))
    assert_refused(refused.text, refused.status_code, name_of(db_url, employee))
    assert browser(db_url, manager, cycle).get(page_of(employee, cycle)).status_code == 200


# ---------------------------------------------------------------- 2. HR and auditors


@pytest.mark.parametrize(("role", "capacity"), [("hr_admin", "hr"), ("auditor", "auditor")])
def test_hr_and_auditors_read_anyones_page_without_forms(
    db_url: str, cycle: int, role: str, capacity: str
) -> None:
    employee, _ = first_report(db_url, cycle)
    reader = outsider(db_url, cycle)
    grant(db_url, reader, role)
    client = browser(db_url, reader, cycle)
    name = name_of(db_url, employee)

    page = client.get(page_of(employee, cycle))
    assert page.status_code == 200
    assert f'data-capacity="{capacity}"' in page.text
    assert t(f"me.viewing.{capacity}", name=name, id=employee) in page.text
    assert all(title in page.text for title in goal_titles(db_url, cycle, employee))
    assert "<form" not in main(page.text)
    # Without a cycle: the person's newest one.
    assert main(client.get(f"/me?employee={employee}").text) == main(page.text)
    # Someone who takes part in no cycle has no page to read.
    assert client.get(page_of(reader, cycle)).status_code == 404
    assert client.get(page_of("nobody-here", cycle)).status_code == 404

    # And the same after results are released: grade, no individual answers, no forms.
    release_results(db_url, cycle)
    after = client.get(page_of(employee, cycle))
    assert t("me.grade", grade=result_of(db_url, cycle, employee)[0]) in after.text
    assert not [c for c in all_comments(db_url, cycle, employee) if c in after.text]
    assert "<form" not in main(after.text)


# ---------------------------------------------------------------- 3. the home page's "My team"


def test_the_home_page_lists_a_managers_reports_with_working_links(db_url: str, cycle: int) -> None:
    employee, manager = first_report(db_url, cycle)
    reports = reports_of(db_url, cycle, manager)
    boss = browser(db_url, manager, cycle)

    team = card(boss.get("/").text, "team")
    rows = re.findall(rf'id="team-{cycle}-([^"]+)"', team)
    assert sorted(rows) == reports
    for report in reports:
        row = team.split(f'id="team-{cycle}-{report}"')[1].split("</tr>")[0]
        assert t("goals.state.proposed") in row and t("home.team_not_released") in row
        [href] = LINK.findall(row)
        opened = boss.get(href.replace("&amp;", "&"))
        assert opened.status_code == 200
        assert t("me.viewing.manager", name=name_of(db_url, report), id=report) in opened.text

    with session_scope(db_url) as s:
        submit_goals(s, cycle, employee, actor=Actor.person(employee))
    row = card(boss.get("/").text, "team").split(f'id="team-{cycle}-{employee}"')[1]
    assert t("goals.state.submitted") in row.split("</tr>")[0]

    # Someone who manages nobody in any cycle has no such section.
    plain, _, _ = colleagues(db_url, cycle)
    page = browser(db_url, plain, cycle).get("/")
    assert page.status_code == 200 and 'id="team"' not in page.text
    assert "employee=" not in page.text


def test_a_completed_cycle_stays_on_the_team_list_for_a_year(db_url: str, cycle: int) -> None:
    _, manager = first_report(db_url, cycle)
    boss = browser(db_url, manager, cycle)

    def completed(days_ago: int) -> str:
        with session_scope(db_url) as s:
            found = s.get(Cycle, cycle)
            assert found is not None
            found.state, found.completed_at = "completed", clock.now() - timedelta(days=days_ago)
        return boss.get("/").text

    assert f'id="team-{cycle}"' in completed(30)
    gone = completed(400)
    assert 'id="team"' not in gone and "employee=" not in gone


# ---------------------------------------------------------------- 4. auditors on HR's pages


def test_an_auditor_reads_hr_progress_but_cannot_remind_or_retry(db_url: str, cycle: int) -> None:
    reply = "550 5.1.1 mailbox unavailable"
    with session_scope(db_url) as s:
        failed = s.scalars(
            select(OutboxMessage).where(OutboxMessage.cycle_id == cycle).order_by(OutboxMessage.id)
        ).first()
        assert failed is not None
        failed.state, failed.attempts, failed.last_error = "failed", 1, reply
        failed_id = failed.id
    hr_person, auditor = outsider(db_url, cycle), first_report(db_url, cycle)[0]
    grant(db_url, hr_person, "hr_admin")
    grant(db_url, auditor, "auditor")
    remind = f'action="/hr/cycles/{cycle}/remind"'
    retry = f'action="/hr/cycles/{cycle}/mail/retry"'

    # HR still gets both forms (so their absence below is the auditor's, not the page's).
    hr_page = browser(db_url, hr_person, cycle).get(f"/hr/cycles/{cycle}").text
    assert remind in hr_page and retry in hr_page and 'id="read-only"' not in hr_page

    client = browser(db_url, auditor, cycle)
    listing = client.get("/hr/cycles")
    assert listing.status_code == 200 and f'href="/hr/cycles/{cycle}"' in listing.text
    page = client.get(f"/hr/cycles/{cycle}")
    assert page.status_code == 200
    assert 'id="stage-target_setting"' in page.text and t("hr.read_only") in page.text
    row = page.text.split(f'id="mail-{failed_id}"')[1].split("</tr>")[0]
    assert reply in row
    assert remind not in page.text and retry not in page.text
    assert 'name="message"' not in page.text and "<form" not in main(page.text)

    def outbox_rows() -> list[tuple[int, str]]:
        with session_scope(db_url) as s:
            return list(
                s.execute(select(OutboxMessage.id, OutboxMessage.state).order_by(OutboxMessage.id))
                .tuples()
                .all()
            )

    def reminders_audited() -> int:
        with session_scope(db_url) as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.action == "reminders.sent_now")
                )
                or 0
            )

    before = outbox_rows()
    token = csrf_of(page.text)  # a valid token: the refusal is about the role
    for path, data in [
        (f"/hr/cycles/{cycle}/remind", {"csrf_token": token}),
        (f"/hr/cycles/{cycle}/mail/retry", {"csrf_token": token, "message": str(failed_id)}),
    ]:
        response = client.post(path, data=data)
        assert response.status_code == 403, path
        assert t("forbidden") in response.text and t("csrf_failed") not in response.text
    assert outbox_rows() == before
    assert reminders_audited() == 0
