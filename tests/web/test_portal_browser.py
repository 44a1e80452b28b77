"""The portal in a real browser (Playwright driving Debian's chromium), from mails received.

Each journey runs the demo cycle to the point where people act, relays the outbox to an SMTP
sink, takes the link from an .eml file the sink wrote, and opens it in chromium against the
portal served by uvicorn on loopback. Every page visited is saved as a screenshot in the test's
output folder ($PERFCYCLE_TEST_OUTPUT/<test>, else the test's tmp_path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Browser, BrowserContext, Page, Response, sync_playwright
from sqlalchemy import func, select

from perfcycle.core.db import session_scope
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Employee,
    Evaluation,
    Goal,
    Participant,
    PortalRole,
    RaterAssignment,
    TaskToken,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import items_for, submit_evaluation
from perfcycle.domain.stages.target_setting import submit_goals
from perfcycle.notifications import links
from perfcycle.web import i18n
from tests.support.browser import (
    CHROMIUM_ARGS,
    LAPTOP,
    PHONE,
    Inbox,
    PortalServer,
    output_dir,
    require_chromium,
    serve_portal,
)
from tests.support.cycle import (
    decide,
    full_answers,
    launch,
    play_until_waiting_at,
    prepare_demo_org,
    run_until_wait,
)
from tests.support.factories import freeze

PERIOD = "2026-Q4"
POLICY = "external-service"
T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUBMIT = 'form.evaluation button[name="action"][value="submit"]'
DRAFT = 'form.evaluation button[name="action"][value="draft"]'


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_chromium()
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@dataclass
class Stack:
    """The portal, the mail sink and the database the demo cycle runs in."""

    url: str
    portal: PortalServer
    inbox: Inbox
    folder: Path
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def stack(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    freeze(monkeypatch, T0)
    with serve_portal(db_url, monkeypatch) as portal, Inbox(tmp_path / "mail") as inbox:
        yield Stack(db_url, portal, inbox, tmp_path, monkeypatch)


class Camera:
    """Full-page screenshots, numbered in the order the journey took them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    def shoot(self, page: Page, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > len(PNG_SIGNATURE), path
        assert path.read_bytes().startswith(PNG_SIGNATURE), path
        self.taken.append(path)
        return path


@pytest.fixture
def camera(request: pytest.FixtureRequest, tmp_path: Path) -> Camera:
    return Camera(output_dir(request, tmp_path))


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """A fresh browser profile (own cookies) per person; closed after the test."""
    opened: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(**{"viewport": LAPTOP, **options})
        context.set_default_timeout(10_000)
        opened.append(context)
        return context

    yield make
    for context in opened:
        context.close()


# ---------------------------------------------------------------- helpers


def use_policy(stack: Stack, raters: dict[str, int]) -> None:
    """The shipped policies, with the external-service rater counts changed."""
    folder = stack.folder / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    for path in (REPO_ROOT / "policies").glob("*.yaml"):
        source = path.read_text(encoding="utf-8")
        if path.stem == POLICY:
            data = yaml.safe_load(source)
            for rater_type, count in raters.items():
                data["raters"][rater_type]["count"] = count
            source = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        (folder / path.name).write_text(source, encoding="utf-8")
    stack.monkeypatch.setenv("PERFCYCLE_POLICIES_DIR", str(folder))
    get_settings.cache_clear()


def cycle_at_evaluation(stack: Stack) -> int:
    """The demo cycle, played until the raters have their forms; their mails in the sink."""
    org = prepare_demo_org(stack.url, stack.folder)
    stack.monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    cycle_id = launch(stack.url, POLICY, PERIOD)
    assert play_until_waiting_at(stack.url, cycle_id, "evaluation").next == "people"
    assert stack.inbox.deliver(stack.url) > 0
    return cycle_id


def pending(url: str, cycle_id: int) -> list[RaterAssignment]:
    with session_scope(url) as s:
        return list(
            s.scalars(
                select(RaterAssignment)
                .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
                .order_by(RaterAssignment.id)
            )
        )


def person(url: str, employee_id: str) -> Employee:
    with session_scope(url) as s:
        found = s.get(Employee, employee_id)
        assert found is not None
        s.expunge(found)
        return found


def saved(url: str, assignment_id: int) -> tuple[str, dict[str, tuple[int, str]]]:
    """The assignment's state and its stored answers {item: (score, comment)}."""
    with session_scope(url) as s:
        found = s.get(RaterAssignment, assignment_id)
        assert found is not None
        answers = {
            e.item: (e.score, e.comment)
            for e in s.scalars(select(Evaluation).where(Evaluation.assignment_id == assignment_id))
        }
        return found.state, answers


def press(page: Page, button: str) -> Response:
    """Click a form's button; the response to the POST itself (before any redirect)."""
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.locator(button).click()
    page.wait_for_load_state()
    return posted.value


def assert_fits_the_screen(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{page.url} scrolls sideways: {widths[0]} > {widths[1]} px"


# ---------------------------------------------------------------- 1. evaluation from the mail


def test_a_rater_opens_the_mailed_link_and_submits_an_evaluation_with_a_required_comment(
    stack: Stack, camera: Camera, new_context: Callable[..., BrowserContext]
) -> None:
    cycle_id = cycle_at_evaluation(stack)
    mine = next(a for a in pending(stack.url, cycle_id) if a.rater_type == "peer")
    rater = person(stack.url, mine.rater_id)
    link = stack.inbox.mail_to(rater.email, "evaluation_assigned").link()
    assert link.startswith(f"{stack.portal.base_url}/t/")
    with session_scope(stack.url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
    items = items_for(policy, mine.rater_type)
    strict = next(i for i in items if 5 in i.comment_required_for)

    page = new_context().new_page()
    opened = page.goto(link)
    assert opened is not None and opened.status == 200
    assert page.url == f"{stack.portal.base_url}/evaluations?cycle={cycle_id}"
    camera.shoot(page, "evaluation-list")
    page.locator(f'a[href="/evaluations/{mine.id}"]').click()
    page.wait_for_url(f"**/evaluations/{mine.id}")
    camera.shoot(page, "evaluation-form")
    anchor_of = (lambda a: a.zh_CN) if rater.locale == "zh-CN" else (lambda a: a.en)
    for level, anchor in strict.anchors.items():
        choice = page.locator(f"#item-{strict.id} label.level").filter(
            has=page.locator(f'input[value="{level}"]')
        )
        assert anchor_of(anchor) in choice.inner_text()

    # Half the form, kept as a draft: it is there again when the rater comes back.
    half = items[: len(items) // 2 or 1]
    for item in half:
        page.locator(f'input[name="score.{item.id}"][value="3"]').check()
    assert press(page, DRAFT).status == 303
    page.goto(f"{stack.portal.base_url}/evaluations/{mine.id}")
    assert all(page.locator(f'input[name="score.{i.id}"][value="3"]').is_checked() for i in half)
    assert saved(stack.url, mine.id) == ("pending", {})

    for item in items:
        page.locator(f'input[name="score.{item.id}"][value="3"]').check()
    page.locator(f'input[name="score.{strict.id}"][value="5"]').check()
    refused = press(page, SUBMIT)
    assert refused.status == 422
    error = page.locator(f"#item-{strict.id} #error-{strict.id}")
    assert i18n.translate("problem.comment_needed", rater.locale, score=5) in error.inner_text()
    assert error.is_visible()
    # What the rater chose is still there to correct, and nothing was saved.
    assert page.locator(f'input[name="score.{strict.id}"][value="5"]').is_checked()
    assert saved(stack.url, mine.id) == ("pending", {})
    camera.shoot(page, "evaluation-comment-missing")

    page.locator(f"#comment-{strict.id}").fill("热情周到，主动跟进每一个问题")
    done = press(page, SUBMIT)
    assert done.status == 303
    page.wait_for_url(f"**/evaluations/{mine.id}")
    state, answers = saved(stack.url, mine.id)
    assert state == "submitted"
    assert answers == {
        i.id: (5, "热情周到，主动跟进每一个问题") if i.id == strict.id else (3, "") for i in items
    }
    # Read-only now: every item disabled, the choices and the comment shown, no submit button.
    assert page.locator("form.evaluation fieldset[disabled]").count() == len(items)
    assert page.locator(f"{SUBMIT}, {DRAFT}").count() == 0
    assert page.locator(f'input[name="score.{strict.id}"][value="5"]').is_checked()
    assert page.locator(f"#comment-{strict.id}").input_value() == "热情周到，主动跟进每一个问题"
    assert page.get_by_role("status").is_visible()
    camera.shoot(page, "evaluation-read-only")
    assert len(camera.taken) == 4


def test_the_evaluation_and_goal_pages_fit_a_phone_screen(
    stack: Stack, camera: Camera, new_context: Callable[..., BrowserContext]
) -> None:
    cycle_id = cycle_at_evaluation(stack)
    mine = pending(stack.url, cycle_id)[0]
    link = stack.inbox.mail_to(person(stack.url, mine.rater_id).email, "evaluation_assigned").link()

    phone = new_context(viewport=PHONE, is_mobile=True, has_touch=True).new_page()
    phone.goto(link)
    assert_fits_the_screen(phone)
    camera.shoot(phone, "phone-evaluation-list")
    opened = phone.goto(f"{stack.portal.base_url}/evaluations/{mine.id}")
    assert opened is not None and opened.status == 200
    assert phone.viewport_size == PHONE
    assert phone.locator("form.evaluation fieldset").count() > 0
    assert_fits_the_screen(phone)
    camera.shoot(phone, "phone-evaluation-form")
    goals = phone.goto(f"{stack.portal.base_url}/goals?cycle={cycle_id}")
    assert goals is not None and goals.status == 200
    assert phone.locator("#mine table.goals").count() == 1
    assert_fits_the_screen(phone)
    camera.shoot(phone, "phone-goals")


# ---------------------------------------------------------------- 2. transparency page


def test_an_employee_sees_rater_groups_only_when_enough_raters_answered(
    stack: Stack, camera: Camera, new_context: Callable[..., BrowserContext]
) -> None:
    use_policy(stack, {"service_recipient": 3})
    cycle_id = cycle_at_evaluation(stack)
    assignments = pending(stack.url, cycle_id)
    ratees = sorted({a.ratee_id for a in assignments})
    full, short = ratees[0], ratees[1]
    # `short` gets 2 of its 3 service-recipient answers (below the threshold of 3); the rest all.
    skipped = next(
        a for a in assignments if a.ratee_id == short and a.rater_type == "service_recipient"
    )
    with session_scope(stack.url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
        assert policy.anonymity_threshold == 3
        for a in assignments:
            if a.id != skipped.id:
                answers = full_answers(s, a)
                submit_evaluation(s, a.id, answers, Actor.person(a.rater_id), policy)
        due = engine.stage_instances(s, cycle_id)["evaluation"].due_at
    # Past the deadline and its extension the stage closes; the committee approves calibration.
    freeze(stack.monkeypatch, due + timedelta(days=1))
    run_until_wait(stack.url, cycle_id)
    freeze(stack.monkeypatch, due + timedelta(days=7))
    assert play_until_waiting_at(stack.url, cycle_id, "calibration").next == "approval"
    decide(stack.url, cycle_id, decision="approve", approver="committee")
    run_until_wait(stack.url, cycle_id)
    assert stack.inbox.deliver(stack.url) > 0

    for employee_id, answered, shown in ((full, 3, True), (short, 2, False)):
        employee = person(stack.url, employee_id)
        page = open_results(stack, new_context(), employee, cycle_id)
        group = page.locator("#group-service_recipient")
        text = group.inner_text()
        assert i18n.translate("me.answered", employee.locale, n=answered) in text
        too_few = i18n.translate("me.too_few", employee.locale)
        if shown:
            assert too_few not in text
            means = group.locator(".mean").all_inner_texts()
            assert means and set(means) == {"4.00"}
        else:
            assert too_few in text
            assert group.locator(".mean").count() == 0
        camera.shoot(page, f"transparency-{'shown' if shown else 'too-few'}")

    # The same page, evidence lists and all, on a phone.
    phone = open_results(
        stack, new_context(viewport=PHONE, is_mobile=True, has_touch=True), person(stack.url, full),
        cycle_id,
    )
    assert phone.locator("#metrics").count() == 1
    assert_fits_the_screen(phone)
    camera.shoot(phone, "phone-transparency")


def open_results(stack: Stack, context: BrowserContext, employee: Employee, cycle_id: int) -> Page:
    """The employee opens the link of their results_released mail, then their results page."""
    link = stack.inbox.mail_to(employee.email, "results_released").link()
    page = context.new_page()
    opened = page.goto(link)
    assert opened is not None and opened.status == 200
    if "/me" not in page.url:
        page.goto(f"{stack.portal.base_url}/me?cycle={cycle_id}")
    assert employee.name in page.locator("header").inner_text()
    return page


# ---------------------------------------------------------------- 3. expired link


def test_an_expired_link_offers_a_new_one_which_arrives_and_signs_in(
    stack: Stack, camera: Camera, new_context: Callable[..., BrowserContext]
) -> None:
    cycle_id = cycle_at_evaluation(stack)
    mine = pending(stack.url, cycle_id)[0]
    rater = person(stack.url, mine.rater_id)
    link = stack.inbox.mail_to(rater.email, "evaluation_assigned").link()
    with session_scope(stack.url) as s:
        row = s.scalar(
            select(TaskToken).where(TaskToken.token_hash == links.hash_token(links.token_of(link)))
        )
        assert row is not None
        expires_at = row.expires_at
    freeze(stack.monkeypatch, expires_at + timedelta(minutes=1))

    page = new_context().new_page()
    opened = page.goto(link)
    assert opened is not None and opened.status == 410
    assert i18n.translate("link_expired", rater.locale) in page.locator("h1").inner_text()
    renewal = page.locator('form[action="/auth/new-link"]')
    assert renewal.is_visible()
    camera.shoot(page, "link-expired")
    with session_scope(stack.url) as s:
        tokens_before = s.scalar(select(func.count()).select_from(TaskToken))

    renewal.locator('input[name="email"]').fill(rater.email)
    sent = press(page, 'form[action="/auth/new-link"] button[type=submit]')
    assert sent.status == 200
    camera.shoot(page, "new-link-sent")
    with session_scope(stack.url) as s:
        assert s.scalar(select(func.count()).select_from(TaskToken)) == (tokens_before or 0) + 1
    assert stack.inbox.deliver(stack.url) == 1

    fresh = stack.inbox.mail_to(rater.email, "sign_in_link").link()
    assert fresh != link
    opened = page.goto(fresh)
    assert opened is not None and opened.status == 200
    camera.shoot(page, "sign-in-button")
    signed = press(page, "#continue")
    assert signed.status == 303
    listed = page.goto(f"{stack.portal.base_url}/evaluations?cycle={cycle_id}")
    assert listed is not None and listed.status == 200
    assert page.locator(f"#assignment-{mine.id}").is_visible()
    camera.shoot(page, "signed-in-with-new-link")


# ---------------------------------------------------------------- 4. HR stands in for a manager


def test_an_hr_admin_approves_from_the_mailed_link_the_goals_of_someone_without_a_manager(
    stack: Stack, camera: Camera, new_context: Callable[..., BrowserContext]
) -> None:
    org = prepare_demo_org(stack.url, stack.folder)
    stack.monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    cycle_id = launch(stack.url, POLICY, PERIOD)
    assert play_until_waiting_at(stack.url, cycle_id, "target_setting").next == "people"
    with session_scope(stack.url) as s:
        rows = s.execute(
            select(Participant.employee_id, Participant.manager_id)
            .where(Participant.cycle_id == cycle_id)
            .order_by(Participant.employee_id)
        ).all()
        head = next(e for e, m in rows if m is None)
        clerk = next(e for e, m in rows if m is not None)
        submit_goals(s, cycle_id, head, actor=Actor.person(head))
        s.add(PortalRole(principal=clerk, role="hr_admin", granted_by="test", granted_at=T0))
    assert stack.inbox.deliver(stack.url) > 0

    # HR's own goals mail signs them in; their home page leads to the sheets HR approves.
    page = new_context().new_page()
    page.goto(stack.inbox.mail_to(person(stack.url, clerk).email, "goals_to_agree").link())
    home = page.goto(f"{stack.portal.base_url}/")
    assert home is not None and home.status == 200
    page.locator(f"#place-team-{cycle_id}").click()
    sheet = page.locator(f"#standing_in #sheet-{head}")
    assert sheet.count() == 1
    camera.shoot(page, "hr-standing-in")
    with page.expect_navigation():
        sheet.locator("button[value=approve]").click()
    camera.shoot(page, "hr-approved")
    assert page.url.startswith(f"{stack.portal.base_url}/goals")
    with session_scope(stack.url) as s:
        goals = s.scalars(select(Goal).where(Goal.cycle_id == cycle_id, Goal.employee_id == head))
        assert {(g.state, g.manager_signed_at is not None) for g in goals} == {("agreed", True)}
        signer = s.scalar(
            select(AuditEvent.actor).where(
                AuditEvent.action == "goals.agreed",
                AuditEvent.subject == f"cycle:{cycle_id}/employee:{head}",
            )
        )
    assert signer == clerk  # the audit names the HR admin who signed
