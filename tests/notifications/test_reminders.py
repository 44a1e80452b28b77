"""Reminders, escalations and check-ins under a frozen clock: who gets what, and when.

The demo organisation runs real cycles (tests/support/cycle.py); PERFCYCLE_NOW moves the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    Cycle,
    Employee,
    ImprovementPlan,
    OutboxMessage,
    Participant,
    PlanCheckin,
    RaterAssignment,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages import improvement
from perfcycle.domain.stages.evaluation import submit_evaluation
from perfcycle.domain.stages.target_setting import approve_goals, submit_goals
from perfcycle.notifications import links, reminders
from tests.support import databases
from tests.support.cycle import (
    DemoOrg,
    full_answers,
    launch,
    play_until_waiting_at,
    run_until_wait,
)
from tests.support.factories import (
    RESULTS,
    add_results,
    build_cycle,
    make_policy,
    name_of,
    run_handler,
    write_policies,
)

# A Monday morning well after the period; target setting (14 days) is due on 18 Jan, 09:00.
T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
DUE = T0 + timedelta(days=14)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def demo(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_org_built: DemoOrg
) -> Iterator[DemoOrg]:
    org = databases.copy_demo_org(demo_org_built, db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    at(monkeypatch, T0)
    yield org
    get_settings.cache_clear()


def at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> datetime:
    monkeypatch.setenv("PERFCYCLE_NOW", moment.isoformat())
    return moment


def start(url: str, policy: str = "external-service", period: str = "2026-Q4") -> int:
    cycle_id = launch(url, policy, period)
    assert run_until_wait(url, cycle_id).stage == "target_setting"
    return cycle_id


def run(
    monkeypatch: pytest.MonkeyPatch, url: str, moment: datetime, send: Callable[..., int]
) -> int:
    at(monkeypatch, moment)
    with session_scope(url) as s:
        return send(s, moment)


def mails(url: str, template: str, since: datetime | None = None) -> list[OutboxMessage]:
    with session_scope(url) as s:
        query = select(OutboxMessage).where(OutboxMessage.template == template)
        if since is not None:
            query = query.where(OutboxMessage.created_at >= since)
        return list(s.scalars(query.order_by(OutboxMessage.recipient_email)))


def sign_goals(url: str, cycle_id: int, employee_id: str, *, approve: bool = True) -> None:
    with session_scope(url) as s:
        submit_goals(s, cycle_id, employee_id, actor=Actor.person(employee_id))
        if approve:
            manager = s.get_one(Employee, employee_id).manager_id
            approve_goals(
                s, cycle_id, employee_id, actor=Actor.person(manager) if manager else Actor.hr()
            )


def participants(url: str, cycle_id: int) -> set[str]:
    with session_scope(url) as s:
        query = select(Participant.employee_id).where(Participant.cycle_id == cycle_id)
        return set(s.scalars(query))


def manager_of(url: str, employee_id: str) -> str | None:
    with session_scope(url) as s:
        return s.get_one(Employee, employee_id).manager_id


def by_recipient(rows: list[OutboxMessage]) -> dict[str | None, dict[str, Any]]:
    return {m.recipient_id: m.context for m in rows}


# ---------------------------------------------------------------- reminders


def test_reminders_come_3_and_1_days_before_only_to_the_unfinished(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = demo.url
    cycle_id = start(url)
    # E0005 is done; E0006 submitted and waits for their manager E0002 to approve.
    sign_goals(url, cycle_id, "E0005")
    sign_goals(url, cycle_id, "E0006", approve=False)
    unsigned = participants(url, cycle_id) - {"E0005", "E0006"}
    send = reminders.due_reminders

    assert run(monkeypatch, url, DUE - 3 * DAY - HOUR, send) == 0
    assert run(monkeypatch, url, DUE - 3 * DAY + HOUR, send) == len(unsigned)
    first = by_recipient(mails(url, "reminder"))
    assert set(first) == unsigned and "E0002" in unsigned
    [own, approval] = first["E0002"]["tasks"]
    assert (own["action"], approval["action"]) == ("submit_goals", "approve_goals")
    assert name_of(url, "E0006") in approval["what"]
    assert own["due_at"] == DUE.isoformat() and own["stage"] == "target_setting"
    token = _token(url, own["link"], DUE)
    assert (token.person_id, token.task_kind, token.task_ref) == (
        "E0002",
        "goals",
        "target_setting:1",
    )

    # Later the same day, and the day after: nothing new is due.
    assert run(monkeypatch, url, DUE - 3 * DAY + 6 * HOUR, send) == 0
    assert run(monkeypatch, url, DUE - 2 * DAY, send) == 0

    sign_goals(url, cycle_id, "E0007")
    assert run(monkeypatch, url, DUE - DAY + HOUR, send) == len(unsigned) - 1
    second = by_recipient(mails(url, "reminder", since=DUE - DAY))
    assert set(second) == unsigned - {"E0007"}
    assert all(
        m.idempotency_key.startswith(f"-:{m.recipient_id}:reminder:")
        for m in mails(url, "reminder")
    )

    assert run(monkeypatch, url, DUE + HOUR, send) == 0


def test_one_digest_a_day_lists_every_pending_task_across_cycles(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = demo.url
    q3 = start(url, period="2026-Q3")
    at(monkeypatch, T0 + 2 * DAY)
    q4 = start(url, period="2026-Q4")
    send = reminders.due_reminders

    # Q3's 3-day reminder: one mail listing both cycles' tasks, the most urgent first.
    run(monkeypatch, url, DUE - 3 * DAY + HOUR, send)
    [digest] = [m for m in mails(url, "reminder") if m.recipient_id == "E0005"]
    assert digest.cycle_id is None
    assert [(t["cycle_id"], t["period"]) for t in digest.context["tasks"]] == [
        (q3, "2026-Q3"),
        (q4, "2026-Q4"),
    ]
    assert len({t["link"] for t in digest.context["tasks"]}) == 2

    # The next day nothing new is due; the day after, Q3's 1-day and Q4's 3-day reminders
    # fall on the same day: still one mail.
    assert run(monkeypatch, url, DUE - 2 * DAY + HOUR, send) == 0
    assert run(monkeypatch, url, DUE - DAY + HOUR, send) > 0
    received = [m for m in mails(url, "reminder") if m.recipient_id == "E0005"]
    assert len(received) == 2
    assert {m.idempotency_key for m in received} == {
        "-:E0005:reminder:2027-01-15",
        "-:E0005:reminder:2027-01-17",
    }
    assert len(received[1].context["tasks"]) == 2


def test_one_digest_a_day_means_the_readers_day_not_utcs(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cycles whose 3-day reminders fall either side of UTC midnight: 07:45 and 08:45 of
    the same morning in Shanghai (the mail time zone) are one day, one digest."""
    url = demo.url
    at(monkeypatch, datetime(2027, 1, 3, 23, 30, tzinfo=UTC))
    start(url, period="2026-Q3")  # due 14 days later: 3-day offset 2027-01-14 23:30 UTC
    at(monkeypatch, datetime(2027, 1, 4, 0, 30, tzinfo=UTC))
    start(url, period="2026-Q4")  # 3-day offset 2027-01-15 00:30 UTC
    send = reminders.due_reminders

    assert run(monkeypatch, url, datetime(2027, 1, 14, 23, 45, tzinfo=UTC), send) > 0
    assert run(monkeypatch, url, datetime(2027, 1, 15, 0, 45, tzinfo=UTC), send) == 0
    received = [m for m in mails(url, "reminder") if m.recipient_id == "E0005"]
    assert [m.idempotency_key for m in received] == ["-:E0005:reminder:2027-01-15"]
    assert len(received[0].context["tasks"]) == 2  # both cycles' tasks, in that one mail


def test_raters_who_finished_get_no_reminder(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = demo.url
    cycle_id = launch(url, "external-service", "2026-Q4")
    status = play_until_waiting_at(url, cycle_id, "evaluation")
    assert status.due_at is not None
    pending = _pending_assignments(url, cycle_id)
    done, partly = sorted(pending)[:2]
    _submit(url, cycle_id, pending[done])
    _submit(url, cycle_id, pending[partly][:1])

    # The external-service policy reminds raters 5, 3 and 1 days before.
    sent = run(monkeypatch, url, status.due_at - 5 * DAY + HOUR, reminders.due_reminders)

    digests = by_recipient(mails(url, "reminder"))
    assert sent == len(pending) - 1 and done not in digests
    [task] = digests[partly]["tasks"]
    assert task["action"] == "evaluate" and task["stage"] == "evaluation"
    still = {name_of(url, a.ratee_id) for a in pending[partly][1:]}
    assert all(name in task["what"] for name in still)
    assert name_of(url, pending[partly][0].ratee_id) not in task["what"]


def test_reminders_follow_the_policy_events(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def managers_only(policy: dict[str, Any]) -> None:
        policy["notifications"]["events"]["reminder"]["to"] = ["manager"]

    write_policies(tmp_path / "managers", monkeypatch, managers_only)
    url = demo.url
    cycle_id = start(url)
    sign_goals(url, cycle_id, "E0006", approve=False)

    assert run(monkeypatch, url, DUE - 3 * DAY + HOUR, reminders.due_reminders) == 1
    [digest] = mails(url, "reminder")
    assert digest.recipient_id == "E0002"
    assert [t["action"] for t in digest.context["tasks"]] == ["approve_goals"]


def test_a_disabled_reminder_sends_nothing(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def silence(policy: dict[str, Any]) -> None:
        policy["notifications"]["events"]["reminder"]["enabled"] = False

    write_policies(tmp_path / "silent", monkeypatch, silence)
    start(demo.url)

    for moment in (DUE - 3 * DAY + HOUR, DUE - DAY + HOUR):
        assert run(monkeypatch, demo.url, moment, reminders.due_reminders) == 0
    assert mails(demo.url, "reminder") == []


def test_no_reminder_for_an_offset_before_the_stage_opened(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def two_day_target_setting(policy: dict[str, Any]) -> None:
        policy["stages"][0]["days"] = 2

    write_policies(tmp_path / "short", monkeypatch, two_day_target_setting)
    start(demo.url)
    send = reminders.due_reminders

    # The 3-day offset fell before the stage opened: the task mail was just sent.
    assert run(monkeypatch, demo.url, T0 + HOUR, send) == 0
    assert run(monkeypatch, demo.url, T0 + DAY + HOUR, send) > 0
    keys = {t["reminder_key"] for m in mails(demo.url, "reminder") for t in m.context["tasks"]}
    assert {k.rsplit(":", 1)[1] for k in keys} == {"1"}


# ---------------------------------------------------------------- escalations


def test_overdue_people_are_escalated_to_their_manager_once(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = demo.url
    cycle_id = start(url)
    sign_goals(url, cycle_id, "E0005")
    overdue = participants(url, cycle_id) - {"E0005"}
    send = reminders.due_escalations

    assert run(monkeypatch, url, DUE + DAY - HOUR, send) == 0
    sent = run(monkeypatch, url, DUE + DAY + HOUR, send)

    escalations = mails(url, "escalation")
    assert sent == len(escalations) > 0
    listed = {o["employee_id"] for m in escalations for o in m.context["overdue"]}
    assert listed == overdue
    for mail in escalations:
        for entry in mail.context["overdue"]:
            boss = manager_of(url, entry["employee_id"])
            assert mail.recipient_id == boss, entry
        assert mail.context["stage"] == "target_setting"
        assert mail.context["deadline"] == DUE.isoformat()
    e0002 = by_recipient(escalations)["E0002"]
    assert {o["employee_id"] for o in e0002["overdue"]} == {"E0006", "E0007"} & overdue
    assert e0002["overdue"][0]["tasks"] == ["确认并提交本期绩效目标"]

    # The deadline rule (escalate: 2 days' grace) moves the deadline: nobody is told twice.
    with session_scope(url) as s:
        cycle = engine.get_cycle(s, cycle_id)
        inst = engine.stage_instances(s, cycle_id)["target_setting"]
        assert engine.assess(s, cycle, cycle_policy(cycle), inst).wait == "people"
    assert run(monkeypatch, url, DUE + 2 * DAY, send) == 0
    assert len(mails(url, "escalation")) == len(escalations)


def test_someone_without_a_manager_is_escalated_to_hr(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = demo.url
    start(url)
    run(monkeypatch, url, DUE + DAY + HOUR, reminders.due_escalations)

    [to_hr] = [m for m in mails(url, "escalation") if m.recipient_id is None]
    assert to_hr.recipient_email == get_settings().hr_email
    assert [o["employee_id"] for o in to_hr.context["overdue"]] == ["E0001"]
    assert manager_of(url, "E0001") is None


def test_a_policy_can_escalate_everything_to_hr(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    # professional-support: unsigned goals go to HR on the deadline day itself.
    url = demo.url
    cycle_id = start(url, policy="professional-support")

    assert run(monkeypatch, url, DUE + HOUR, reminders.due_escalations) == 1
    [mail] = mails(url, "escalation")
    assert (mail.recipient_email, mail.context["role"]) == (get_settings().hr_email, "hr")
    listed = {o["employee_id"] for o in mail.context["overdue"]}
    assert listed == participants(url, cycle_id)


# ---------------------------------------------------------------- improvement check-ins


@pytest.fixture
def plans(db_url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Plans for e1, e2 (owner m1) and boss (no owner), opened 30 Nov 2026."""
    at(monkeypatch, datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    cycle_id = build_cycle(db_url, "improvement")
    policy = make_policy()
    with session_scope(db_url) as s:
        s.get_one(Cycle, cycle_id).policy_snapshot = policy.model_dump(mode="json", by_alias=True)
    add_results(db_url, cycle_id, RESULTS)
    run_handler(db_url, improvement.Handler(), "enter", cycle_id, policy)
    return cycle_id


def test_plan_owners_without_a_monthly_checkin_are_reminded_once_a_month(
    db_url: str, plans: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = reminders.due_checkins
    december = datetime(2026, 12, 20, 10, 0, tzinfo=UTC)
    assert run(monkeypatch, db_url, december - DAY, send) == 0
    with session_scope(db_url) as s:
        e1_plan = _plan_ids(s, plans)["e1"]
        improvement.record_checkin(
            s, e1_plan, month="2026-12", progress=30, note="", actor=Actor.person("m1")
        )

    assert run(monkeypatch, db_url, december, send) == 2
    sent = {m.context["employee_id"]: m for m in mails(db_url, "improvement_checkin_due")}
    assert {e: m.recipient_email for e, m in sent.items()} == {
        "e2": "m1@example.com",
        "boss": get_settings().hr_email,
    }
    assert (sent["e2"].context["month"], sent["e2"].context["role"]) == ("2026-12", "owner")
    token = _token(db_url, sent["e2"].context["link"], december)
    assert (token.person_id, token.task_kind) == ("m1", "improvement_checkin")
    assert "link" not in sent["boss"].context
    assert run(monkeypatch, db_url, december + 5 * DAY, send) == 0

    assert run(monkeypatch, db_url, december + 31 * DAY, send) == 3


@pytest.mark.usefixtures("plans")
def test_no_checkin_reminder_in_the_month_a_plan_was_made(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        run(monkeypatch, db_url, datetime(2026, 11, 30, 23, 0, tzinfo=UTC), reminders.due_checkins)
        == 0
    )
    with session_scope(db_url) as s:
        assert s.scalars(select(PlanCheckin)).all() == []


# ---------------------------------------------------------------- helpers


def _token(url: str, link: str, now: datetime) -> Any:
    with session_scope(url) as s:
        found = links.resolve(s, links.token_of(link), now)
    assert found is not None
    return found


def _pending_assignments(url: str, cycle_id: int) -> dict[str, list[RaterAssignment]]:
    found: dict[str, list[RaterAssignment]] = {}
    with session_scope(url) as s:
        for a in s.scalars(
            select(RaterAssignment)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
            .order_by(RaterAssignment.ratee_id)
        ):
            found.setdefault(a.rater_id, []).append(a)
    return found


def _submit(url: str, cycle_id: int, assignments: list[RaterAssignment]) -> None:
    with session_scope(url) as s:
        policy = cycle_policy(engine.get_cycle(s, cycle_id))
        for a in assignments:
            answers = full_answers(s, a)
            submit_evaluation(s, a.id, answers, actor=Actor.person(a.rater_id), policy=policy)


def _plan_ids(s: Any, cycle_id: int) -> dict[str, int]:
    query = select(ImprovementPlan.employee_id, ImprovementPlan.id).where(
        ImprovementPlan.cycle_id == cycle_id
    )
    return {employee_id: plan_id for employee_id, plan_id in s.execute(query)}
