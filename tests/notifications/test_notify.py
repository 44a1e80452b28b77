"""Policy-driven notifications: who gets which mail on which event, with what, and only once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.models import Cycle, OutboxMessage, StageInstance, StageName, TaskToken
from perfcycle.domain.policy.loader import PolicyError, load_policy
from perfcycle.domain.policy.schema import Policy
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages import interview
from perfcycle.domain.stages.base import PendingWork, StageContext
from perfcycle.notifications import links, vocabulary
from perfcycle.notifications.events import EVENT_ROLES, PEOPLE_STAGES, Role
from perfcycle.notifications.notify import LINK_GRACE, Recipient, TaskLink, notify
from tests.support import databases
from tests.support.cycle import (
    DemoOrg,
    launch,
    play_until_waiting_at,
    play_whole_cycle,
)
from tests.support.factories import (
    OPENED,
    POLICY,
    SHIPPED,
    STAGE_DAYS,
    build_cycle,
    run_handler,
    write_policies,
)

PERIOD = "2026-Q4"
DUE = OPENED + timedelta(days=STAGE_DAYS)


# ---------------------------------------------------------------- helpers


def policy_with(notifications: dict[str, Any]) -> Policy:
    return Policy.model_validate({**POLICY, "notifications": notifications})


def rows(db_url: str, *where: Any) -> list[OutboxMessage]:
    with session_scope(db_url) as s:
        query = select(OutboxMessage).where(*where).order_by(OutboxMessage.idempotency_key)
        return list(s.scalars(query))


def token_count(db_url: str) -> int:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(TaskToken)) or 0


def token_for(db_url: str, url: str) -> TaskToken:
    with session_scope(db_url) as s:
        found = links.resolve(s, links.token_of(url), datetime.now(UTC))
    assert found is not None, f"{url} does not resolve"
    return found


def interview_cycle(db_url: str, policy: Policy) -> int:
    """The interview stage of the small org in tests/domain/stages/test_interview_stage.py, under
    `policy`."""
    cycle_id = build_cycle(db_url, "interview")
    with session_scope(db_url) as s:
        s.get_one(Cycle, cycle_id).policy_snapshot = policy.model_dump(mode="json", by_alias=True)
    return cycle_id


@pytest.fixture
def demo(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_org_built: DemoOrg
) -> Iterator[DemoOrg]:
    org = databases.copy_demo_org(demo_org_built, db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    yield org
    get_settings.cache_clear()


# ---------------------------------------------------------------- the policy section


def test_a_policy_without_notifications_gets_the_defaults(tmp_path: Path) -> None:
    data = yaml.safe_load(SHIPPED[0].read_text(encoding="utf-8"))
    del data["notifications"]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")

    n = load_policy(path).notifications

    assert n.rule("interview_scheduled").to == (Role.employee, Role.manager)
    assert n.rule("calibration_ready").to == (Role.committee,)
    assert n.rule("evaluation_assigned").template == "evaluation_assigned"
    assert n.reminder_days("evaluation") == [3, 1]
    assert (n.escalation.after_overdue_days, n.rule("escalation").to) == (1, (Role.manager,))
    assert all(n.rule(event).enabled for event in EVENT_ROLES)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_policies_spell_out_every_event(path: Path) -> None:
    events = yaml.safe_load(path.read_text(encoding="utf-8"))["notifications"]["events"]

    assert list(events) == list(EVENT_ROLES)
    assert all(rule["template"] == event for event, rule in events.items())
    policy = load_policy(path)
    assert policy.notifications.rule("calibration_ready").to[0] == Role.committee


BAD_NOTIFICATIONS = [
    (
        {"events": {"evaluation_asigned": {"enabled": False}}},
        "evaluation_asigned",
        "notifications.events.evaluation_asigned",
        "unknown key 'evaluation_asigned' (did you mean 'evaluation_assigned'?",
    ),
    (
        {"events": {"reminder": {"template": "reminders"}}},
        "reminders",
        "notifications.events.reminder.template",
        "unknown template 'reminders' (did you mean 'reminder'?",
    ),
    (
        {"events": {"evaluation_assigned": {"to": ["committee"]}}},
        "committee",
        "notifications.events.evaluation_assigned.to.0",
        "evaluation_assigned cannot go to committee: its mail is written for rater",
    ),
    (
        {"events": {"appeal_decided": {"to": ["employee", "hr"]}}},
        "hr",
        "notifications.events.appeal_decided.to.1",
        "appeal_decided cannot go to hr: its mail is written for employee, manager",
    ),
    (
        {"events": {"results_released": {"to": ["boss"]}}},
        "boss",
        "notifications.events.results_released.to.0",
        "Input should be 'employee', 'rater', 'manager', 'owner', 'hr', 'committee' or",
    ),
    (
        {"events": {"stage_opened": {"to": []}}},
        "to: []",
        "notifications.events.stage_opened.to",
        "no recipients; write `enabled: false` to turn it off",
    ),
    (
        {"events": {"escalation": {"to": ["hr"]}}},
        "to:",
        "notifications.events.escalation.to",
        "unknown key 'to' (allowed: template, enabled)",
    ),
    (
        {"reminders": {"days_before": [3, 1, 3]}},
        "- 3",
        "notifications.reminders.days_before.2",
        "duplicate entry '3' (first at notifications.reminders.days_before.0)",
    ),
    (
        {"stages": {"calibration": {"reminders": {"days_before": [1]}}}},
        "calibration",
        "notifications.stages.calibration",
        "calibration has no personal tasks to remind of or escalate",
    ),
    (
        {"stages": {"evaluation": {"reminders": {"days_before": [14]}}}},
        "- 14",
        "notifications.stages.evaluation.reminders.days_before.0",
        "14 days before the deadline is before evaluation opens (it lasts 14 days)",
    ),
    (
        {"escalation": {"to": "director"}},
        "director",
        "notifications.escalation.to",
        "Input should be 'manager' or 'hr'",
    ),
]


@pytest.mark.parametrize(
    ("notifications", "on_line", "field", "message"),
    BAD_NOTIFICATIONS,
    ids=[case[2] for case in BAD_NOTIFICATIONS],
)
def test_a_bad_notifications_section_names_the_line_and_the_rule(
    tmp_path: Path, notifications: dict[str, Any], on_line: str, field: str, message: str
) -> None:
    data = yaml.safe_load(SHIPPED[0].read_text(encoding="utf-8"))
    data["notifications"] = notifications
    path = tmp_path / "bad.yaml"
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    path.write_text(text, encoding="utf-8")

    with pytest.raises(PolicyError) as info:
        load_policy(path)

    [problem] = info.value.problems
    assert (problem.file, problem.field) == (str(path), field)
    assert message in problem.message
    assert problem.line is not None and on_line in text.splitlines()[problem.line - 1]


def test_every_stage_with_personal_tasks_lists_them() -> None:
    for stage in StageName:
        handler = engine.handler_for(stage.value)
        assert isinstance(handler, PendingWork) == (stage in PEOPLE_STAGES), stage


# ---------------------------------------------------------------- notify


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFCYCLE_NOW", OPENED.isoformat())


def enter_interviews(db_url: str, policy: Policy) -> int:
    cycle_id = interview_cycle(db_url, policy)
    run_handler(db_url, interview.Handler(), "enter", cycle_id, policy)
    return cycle_id


@pytest.mark.usefixtures("frozen")
def test_the_policy_decides_who_gets_the_mail(db_url: str) -> None:
    enter_interviews(db_url, policy_with({"events": {"interview_scheduled": {"to": ["manager"]}}}))

    sent = rows(db_url)
    assert {(m.recipient_id, m.context["role"]) for m in sent} == {
        ("m1", "manager"),
        ("boss", "manager"),
    }
    assert token_count(db_url) == 2


@pytest.mark.usefixtures("frozen")
def test_a_disabled_event_sends_nothing_and_makes_no_link(db_url: str) -> None:
    policy = policy_with({"events": {"interview_scheduled": {"enabled": False}}})
    cycle_id = enter_interviews(db_url, policy)

    assert rows(db_url) == [] and token_count(db_url) == 0
    with session_scope(db_url) as s:
        assert interview.Handler().progress(
            StageContext(s, s.get_one(Cycle, cycle_id), policy, _stage(s))
        ).total


def _stage(s: Any) -> StageInstance:
    return s.scalars(select(StageInstance)).one()


@pytest.mark.usefixtures("frozen")
def test_a_task_mail_says_who_what_by_when_and_links_to_the_task(db_url: str) -> None:
    cycle_id = enter_interviews(db_url, policy_with({}))

    [mail] = rows(db_url, OutboxMessage.recipient_id == "e1")
    ctx = mail.context
    assert (mail.template, mail.locale, mail.recipient_email) == (
        "interview_scheduled",
        "en",
        "e1@example.com",
    )
    assert mail.idempotency_key == f"{cycle_id}:e1:interview_scheduled:interview:1"
    assert (ctx["name"], ctx["role"], ctx["cycle_id"], ctx["period"]) == (
        "E1",
        "employee",
        cycle_id,
        "2026-Q4",
    )
    assert (ctx["due_at"], ctx["cycle_title"], ctx["manager_name"]) == (
        DUE.isoformat(),
        "Test policy",
        "M1",
    )
    token = token_for(db_url, ctx["link"])
    assert (token.person_id, token.cycle_id, token.task_kind) == ("e1", cycle_id, "interview")
    assert token.task_ref == f"interview:{ctx['interview_id']}"
    assert token.expires_at == DUE + LINK_GRACE


@pytest.mark.usefixtures("frozen")
def test_mailing_lists_come_from_the_settings(db_url: str) -> None:
    policy = policy_with({"events": {"calibration_ready": {"to": ["committee", "hr"]}}})
    cycle_id = interview_cycle(db_url, policy)
    with session_scope(db_url) as s:
        cycle = s.get_one(Cycle, cycle_id)
        added = notify(s, cycle, policy, "calibration_ready", [], "calibration:1", {"flags": 2})

    settings = get_settings()
    sent = rows(db_url)
    assert added == 2
    assert sorted((m.recipient_email, m.recipient_id, m.locale) for m in sent) == sorted(
        [
            (settings.committee_email, None, "zh-CN"),
            (settings.hr_email, None, "zh-CN"),
        ]
    )
    names = {m.context["role"]: m.context["name"] for m in sent}
    assert names == {
        "committee": vocabulary.GROUP_NAMES[Role.committee].get("zh-CN"),
        "hr": vocabulary.GROUP_NAMES[Role.hr].get("zh-CN"),
    }
    assert all("link" not in m.context and m.context["flags"] == 2 for m in sent)


@pytest.mark.usefixtures("frozen")
def test_notifying_again_adds_no_mail_and_no_link(db_url: str) -> None:
    policy = policy_with({})
    cycle_id = interview_cycle(db_url, policy)

    def send() -> int:
        with session_scope(db_url) as s:
            return notify(
                s,
                s.get_one(Cycle, cycle_id),
                policy,
                "goals_to_agree",
                [
                    Recipient(
                        Role.employee,
                        "e1@example.com",
                        "en",
                        "E1",
                        "e1",
                        link=TaskLink("goals", "t:1"),
                    ),
                    Recipient(
                        Role.employee,
                        "e1@example.com",
                        "en",
                        "E1",
                        "e1",
                        link=TaskLink("goals", "t:1"),
                    ),
                ],
                "target_setting:1",
            )

    assert send() == 1
    first = rows(db_url)
    assert send() == 0
    assert rows(db_url)[0].context == first[0].context
    assert token_count(db_url) == 1


# ---------------------------------------------------------------- whole cycles


def test_every_link_of_a_whole_cycle_opens_its_recipients_task(demo: DemoOrg) -> None:
    cycle_id = launch(demo.url, "external-service", PERIOD)
    play_whole_cycle(demo.url, cycle_id)

    linked = [m for m in rows(demo.url) if "link" in m.context]
    templates = {m.template for m in linked}
    assert {"goals_to_agree", "evaluation_assigned", "results_released"} <= templates
    assert {"interview_scheduled", "appeal_window_open"} <= templates
    for mail in linked:
        token = token_for(demo.url, mail.context["link"])
        assert (token.person_id, token.cycle_id) == (mail.recipient_id, cycle_id)
    assert token_count(demo.url) == len(linked), "a token exists for a link nobody was sent"
    assert not [m for m in rows(demo.url) if m.recipient_id is None and "link" in m.context]


def test_rerunning_the_stages_makes_no_new_mail_or_link(demo: DemoOrg) -> None:
    cycle_id = launch(demo.url, "external-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "evaluation")
    before = (len(rows(demo.url)), token_count(demo.url))

    with session_scope(demo.url) as s:
        cycle = engine.get_cycle(s, cycle_id)
        policy = cycle_policy(cycle)
        for name, inst in engine.stage_instances(s, cycle_id).items():
            summary = engine.handler_for(name).enter(StageContext(s, cycle, policy, inst))
            assert summary.get("mails_enqueued", 0) == 0, name

    assert (len(rows(demo.url)), token_count(demo.url)) == before


def test_a_disabled_task_mail_is_not_sent_in_a_real_cycle(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def mute_evaluation(policy: dict[str, Any]) -> None:
        policy["notifications"]["events"]["evaluation_assigned"]["enabled"] = False

    write_policies(tmp_path / "policies", monkeypatch, mute_evaluation)
    cycle_id = launch(demo.url, "external-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "evaluation")

    assert rows(demo.url, OutboxMessage.template == "evaluation_assigned") == []
    assert rows(demo.url, OutboxMessage.template == "goals_to_agree")
    with session_scope(demo.url) as s:
        kinds = set(s.scalars(select(TaskToken.task_kind)))
    assert "evaluation" not in kinds and "goals" in kinds


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
@pytest.mark.usefixtures("frozen")
def test_two_transactions_sending_the_same_mail_leave_one_row_and_one_token(pg_url: str) -> None:
    """The second writer waits on the first's outbox key, then keeps neither mail nor token."""
    policy = policy_with({})
    cycle_id = interview_cycle(pg_url, policy)
    recipient = Recipient(
        Role.employee, "e1@example.com", "en", "E1", "e1", link=TaskLink("goals", "t:1")
    )
    first_wrote = threading.Event()
    added: dict[str, int] = {}

    def send(who: str) -> None:
        with session_scope(pg_url) as s:
            cycle = s.get_one(Cycle, cycle_id)
            added[who] = notify(s, cycle, policy, "goals_to_agree", [recipient], "ts:1")
            if who == "first":
                first_wrote.set()
                time.sleep(0.5)  # the second is now blocked on our uncommitted key

    def send_second() -> None:
        first_wrote.wait(10)
        send("second")

    second = threading.Thread(target=send_second)
    second.start()
    send("first")
    second.join(30)

    assert added == {"first": 1, "second": 0}
    [mail] = rows(pg_url)
    with session_scope(pg_url) as s:
        hashes = list(s.scalars(select(TaskToken.token_hash)))
    assert hashes == [links.hash_token(links.token_of(mail.context["link"]))]
