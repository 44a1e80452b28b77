"""Mail rendering: every mail a real cycle writes renders in both languages, says what to do and
by when, fails loudly on a missing variable, lets an organisation override templates, and becomes
a well-formed MIME message whose Message-ID follows the outbox key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from jinja2 import TemplateNotFound, UndefinedError
from markupsafe import escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    Appeal,
    Employee,
    ImprovementPlan,
    OutboxMessage,
    Participant,
    Result,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.appeal import decide_appeal, file_appeal
from perfcycle.domain.stages.target_setting import return_goals, submit_goals
from perfcycle.notifications import outbox, reminders
from perfcycle.notifications.render import (
    LOCALES,
    PACKAGED_DIR,
    UI,
    Rendered,
    build_message,
    format_date,
    render,
)
from tests.support.cycle import (
    act,
    launch,
    play_until_waiting_at,
    play_whole_cycle,
    prepare_demo_org,
    run_until_wait,
)

SHIPPED = ["external-service", "internal-service", "professional-support"]
TEMPLATES = [
    "goals_to_agree",
    "goals_returned",
    "goals_submitted",
    "evaluation_assigned",
    "stage_opened",
    "stage_closed",
    "stage_escalated",
    "calibration_ready",
    "results_released",
    "interview_scheduled",
    "interview_recorded",
    "improvement_plan_created",
    "improvement_plan_closed",
    "appeal_window_open",
    "appeal_received",
    "appeal_decided",
    "reminder",
    "escalation",
    "improvement_checkin_due",
]
PARTS = ("subject", "txt", "html")
T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
# Mails that only inform: a due_at in their context is some stage's deadline, not the reader's.
INFORMATIONAL = {"results_released", "improvement_plan_closed", "appeal_decided"}
# Free text people typed; it must reach the reader intact (and escaped in HTML).
TYPED = {
    "goals_returned": ("comment",),
    "appeal_received": ("reason",),
    "appeal_decided": ("decision_note",),
    "improvement_plan_created": ("goal",),
    "improvement_plan_closed": ("outcome",),
}
EXTERNAL = [
    re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.I),
    re.compile(r"<link\b[^>]*stylesheet", re.I),
    re.compile(r"<script\b", re.I),
    re.compile(r"<style\b", re.I),
    re.compile(r"@import", re.I),
]


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PERFCYCLE_MAIL_TEMPLATES_DIR", raising=False)
    monkeypatch.delenv("PERFCYCLE_MAIL_TIMEZONE", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def escaped(text: str) -> str:
    return str(escape(text))


def use_override(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("PERFCYCLE_MAIL_TEMPLATES_DIR", str(folder))
    get_settings.cache_clear()


def write(folder: Path, relative: str, text: str) -> None:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- a real cycle's outbox


def return_someones_goals(url: str, cycle_id: int) -> None:
    with session_scope(url) as session:
        employee_id, manager_id = session.execute(
            select(Participant.employee_id, Participant.manager_id)
            .where(Participant.cycle_id == cycle_id, Participant.manager_id.is_not(None))
            .order_by(Participant.employee_id)
            .limit(1)
        ).one()
        submit_goals(session, cycle_id, employee_id, actor=Actor.person(employee_id))
        return_goals(
            session,
            cycle_id,
            employee_id,
            comment='Satisfaction target < 90% is too low; see "Q3 <review>" & fix',
            actor=Actor.person(manager_id),
        )


def escalate_the_overdue_approval(url: str, cycle_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    status = play_until_waiting_at(url, cycle_id, "calibration")
    assert status.due_at is not None
    monkeypatch.setenv("PERFCYCLE_NOW", (status.due_at + timedelta(hours=1)).isoformat())
    run_until_wait(url, cycle_id)


def appeal_and_adjust(url: str, cycle_id: int) -> None:
    """An appeal whose grade is adjusted: the employee and their manager are told."""
    play_until_waiting_at(url, cycle_id, "appeal")
    with session_scope(url) as session:
        appeal, result = session.execute(
            select(Appeal, Result)
            .join(Employee, Employee.id == Appeal.employee_id)
            .join(
                Result,
                (Result.cycle_id == Appeal.cycle_id) & (Result.employee_id == Appeal.employee_id),
            )
            .where(Appeal.cycle_id == cycle_id, Employee.manager_id.is_not(None))
            .order_by(Appeal.employee_id.desc())
            .limit(1)
        ).one()
        policy = cycle_policy(engine.get_cycle(session, cycle_id))
        file_appeal(
            session,
            cycle_id,
            appeal.employee_id,
            reason="My <b>complaint</b> count includes\ntickets from before I joined",
            actor=Actor.person(appeal.employee_id),
        )
        session.flush()
        decide_appeal(
            session,
            appeal.id,
            outcome="adjusted",
            note="Two tickets & one complaint were misattributed",
            actor=Actor.named("supervision-chair", "supervision"),
            policy=policy,
            new_grade=next(g for g in policy.grade_ids() if g != result.grade),
        )


def tick_at(url: str, now: datetime) -> None:
    """The cycle clock's mail at `now`: reminders, escalations and check-ins due."""
    with session_scope(url) as session:
        reminders.tick(session, now)


def remind_then_escalate(url: str, cycle_id: int, stage: str) -> None:
    """Nobody has acted: a digest the day before the deadline, an escalation well after it."""
    status = play_until_waiting_at(url, cycle_id, stage)
    assert status.due_at is not None
    tick_at(url, status.due_at - timedelta(days=1) + timedelta(minutes=1))
    tick_at(url, status.due_at + timedelta(days=7))


def ask_for_checkins_if_plans_are_open(url: str, cycle_id: int) -> None:
    """Play to the improvement stage; if it waits on open plans, the owners are asked for a
    monthly check-in (in a month late enough for a plan to be old enough to need one)."""
    for _ in range(30):
        status = run_until_wait(url, cycle_id)
        if status.stage == "improvement":
            with session_scope(url) as session:
                opened = engine.stage_instances(session, cycle_id)["improvement"].opened_at
            tick_at(url, (opened + timedelta(days=45)).replace(day=28, hour=12))
            return
        with session_scope(url) as session:
            passed = engine.stage_instances(session, cycle_id).get("improvement")
            if passed is not None and passed.state == "completed":
                return
        act(url, cycle_id)
    raise AssertionError("the cycle never reached its improvement stage")


def outbox_of_a_full_cycle(
    url: str, folder: Path, policy: str, monkeypatch: pytest.MonkeyPatch
) -> list[OutboxMessage]:
    """A whole cycle with its detours - a returned goal sheet, reminders and escalations, an
    overdue approval, check-ins, an adjusted appeal - so that every kind of mail is in the
    outbox as the code writes it today."""
    monkeypatch.setenv("PERFCYCLE_NOW", T0.isoformat())
    org = prepare_demo_org(url, folder)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    cycle_id = launch(url, policy, "2026-Q4")
    remind_then_escalate(url, cycle_id, "target_setting")
    return_someones_goals(url, cycle_id)
    remind_then_escalate(url, cycle_id, "evaluation")
    escalate_the_overdue_approval(url, cycle_id, monkeypatch)
    ask_for_checkins_if_plans_are_open(url, cycle_id)
    appeal_and_adjust(url, cycle_id)
    play_whole_cycle(url, cycle_id)
    with session_scope(url) as session:
        rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
        session.expunge_all()
    return rows


def deadline_of(template: str, context: dict[str, Any]) -> str | None:
    if template in INFORMATIONAL or (
        template == "appeal_received" and context.get("role") != "supervision"
    ):
        return None
    value = context.get("deadline") or context.get("due_at")
    return str(value) if value else None


def names_listed(context: dict[str, Any]) -> list[str]:
    """People a mail lists (ratees, interviews, tasks...): each must be named in it."""
    return [
        str(item["name"])
        for value in context.values()
        if isinstance(value, list)
        for item in value
        if isinstance(item, dict) and item.get("name")
    ]


def assert_says_the_facts(template: str, context: dict[str, Any], loc: str, mail: Rendered) -> None:
    where = f"{template} [{loc}] {context}"
    assert mail.subject.strip(), where
    assert "\n" not in mail.subject and "\r" not in mail.subject, where
    assert UI[loc]["auto"] in mail.text, f"{where}: not in {loc}"
    due = deadline_of(template, context)
    if due:
        day = format_date(due, loc)
        assert day in mail.text and day in mail.html, f"{where}: deadline {day} missing"
    for key in ("link", "flow_run_url"):
        if context.get(key):
            url = str(context[key])
            assert url in mail.text, f"{where}: {key} missing from text"
            assert f'href="{escaped(url)}"' in mail.html, f"{where}: {key} not a link in HTML"
    for name in names_listed(context):
        assert name in mail.text and escaped(name) in mail.html, f"{where}: {name} missing"
    for key in TYPED.get(template, ()):
        typed = context.get(key)
        if isinstance(typed, str) and typed.strip():
            first_line = typed.strip().splitlines()[0]
            assert first_line in mail.text, f"{where}: {key} missing from text"
            assert escaped(first_line) in mail.html, f"{where}: {key} missing or unescaped"


def assert_self_contained(template: str, loc: str, page: str) -> None:
    for pattern in EXTERNAL:
        assert not pattern.search(page), f"{template} [{loc}]: {pattern.pattern} in the HTML"


@pytest.mark.parametrize("policy", SHIPPED)
def test_every_mail_of_a_whole_cycle_renders_in_both_languages(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    rows = outbox_of_a_full_cycle(db_url, tmp_path, policy, monkeypatch)
    written = {row.template for row in rows}
    assert written <= set(TEMPLATES), f"templates without a file: {written - set(TEMPLATES)}"
    # Every mail a stage writes is checked, the scenario's detours' mails included; improvement
    # plans exist only where a grade calls for one.
    expected = set(TEMPLATES)
    with session_scope(db_url) as session:
        if session.scalar(select(func.count()).select_from(ImprovementPlan)) == 0:
            expected -= {"improvement_plan_created", "improvement_plan_closed"}
            expected -= {"improvement_checkin_due"}
    assert expected <= written
    assert any(r.context.get("role") == "manager" for r in rows if r.template == "appeal_decided")

    for row in rows:
        for loc in LOCALES:
            mail = render(row.template, loc, row.context)
            assert_says_the_facts(row.template, row.context, loc, mail)
            assert_self_contained(row.template, loc, mail.html)


# ---------------------------------------------------------------- the new mails' contexts

# Shaped as perfcycle.notifications.reminders writes them (the whole-cycle test renders the real
# ones); these
# pin down the wording, with two cycles in one digest.
REMINDER: dict[str, Any] = {
    "name": "王伟",
    "role": "rater",
    "count": 2,
    "due_at": "2026-12-04T09:00:00+00:00",
    "tasks": [
        {
            "cycle_id": 7,
            "period": "2026-Q4",
            "stage": "evaluation",
            "what": "Rate Li Lei and Han Mei",
            "action": "evaluate",
            "role": "rater",
            "due_at": "2026-12-09T09:00:00+00:00",
            "link": "http://portal.test/t/AAA-1",
        },
        {
            "cycle_id": 9,
            "period": "2026-H2",
            "stage": "target_setting",
            "what": "submit_goals",
            "action": "submit_goals",
            "role": "employee",
            "due_at": "2026-12-04T09:00:00+00:00",
            "link": "http://portal.test/t/BBB-2",
        },
    ],
}
ESCALATION: dict[str, Any] = {
    "name": "李娜",
    "role": "manager",
    "cycle_id": 7,
    "period": "2026-Q4",
    "stage": "evaluation",
    "deadline": "2026-12-09T09:00:00+00:00",
    "due_at": "2026-12-09T09:00:00+00:00",
    "days_overdue": 2,
    "count": 2,
    "overdue": [
        {"employee_id": "E1", "name": "王伟", "tasks": ["完成对李雷、韩梅梅的评价"]},
        {"employee_id": "E2", "name": "Anna <Smith>", "tasks": ["evaluate", "submit_goals"]},
    ],
    "link": "http://portal.test/t/CCC-3",
}
CHECKIN: dict[str, Any] = {
    "name": "李娜",
    "role": "owner",
    "cycle_id": 7,
    "period": "2026-Q4",
    "plan_id": 12,
    "employee_id": "E1",
    "employee_name": "王伟",
    "goal": "Satisfaction back above 90%",
    "deadline": "2027-04-30",
    "month": "2027-02",
    "due_at": "2027-02-28T23:59:00+00:00",
    "link": "http://portal.test/t/DDD-4",
}


@pytest.mark.parametrize(
    ("template", "context"),
    [("reminder", REMINDER), ("escalation", ESCALATION), ("improvement_checkin_due", CHECKIN)],
)
@pytest.mark.parametrize("loc", LOCALES)
def test_reminders_escalations_and_checkins_say_what_by_when(
    template: str, context: dict[str, Any], loc: str
) -> None:
    mail = render(template, loc, context)
    assert_says_the_facts(template, context, loc, mail)
    assert_self_contained(template, loc, mail.html)
    for task in context.get("tasks", []):
        assert format_date(task["due_at"], loc) in mail.text
        assert task["link"] in mail.text and task["link"] in mail.html


def test_the_daily_digest_lists_every_task_earliest_deadline_first() -> None:
    mail = render("reminder", "en", REMINDER)
    assert mail.subject == "Reminder: 2 tasks are waiting for you, the first due 4 Dec"
    goals = mail.text.index("Review and submit your goals (H2 2026 · Target setting)")
    assert goals < mail.text.index("Rate Li Lei and Han Mei (Q4 2026 · Multi-rater evaluation)")
    zh = render("reminder", "zh-CN", REMINDER)
    assert zh.subject == "提醒：您有 2 项待办，最早 12月4日截止"
    assert "确认并提交本期绩效目标（2026年下半年 · 目标设定）" in zh.text


def test_an_escalation_names_each_overdue_person_and_their_tasks() -> None:
    mail = render("escalation", "en", ESCALATION)
    assert mail.subject == (
        "Overdue: 2 people have not finished Multi-rater evaluation due 9 Dec; please follow up"
    )
    assert "Anna &lt;Smith&gt; (E2)" in mail.html
    assert "Rate colleagues; Review and submit your goals" in mail.html
    assert "(2 days ago)" in mail.text
    zh = render("escalation", "zh-CN", {**ESCALATION, "overdue": ESCALATION["overdue"][:1]})
    assert zh.subject == "逾期：王伟未在 12月9日前完成多维评价，请跟进"
    assert "完成对李雷、韩梅梅的评价" in zh.text


# ---------------------------------------------------------------- subjects and formats


def ratees(n: int) -> list[dict[str, str]]:
    return [{"employee_id": f"E{i}", "name": f"同事{i}", "rater_type": "peer"} for i in range(n)]


def test_subject_says_the_action_and_the_deadline_in_the_readers_language() -> None:
    context = {
        "cycle_id": 1,
        "stage": "evaluation",
        "due_at": "2026-12-09T01:00:00+00:00",
        "ratees": ratees(6),
        "count": 6,
        "name": "王伟",
    }
    assert render("evaluation_assigned", "zh-CN", context).subject == (
        "请在 12月9日前完成 6 位同事的评价"
    )
    assert render("evaluation_assigned", "en", context).subject == "Rate 6 colleagues by 9 Dec"
    one = {**context, "ratees": ratees(1)}
    assert render("evaluation_assigned", "en", one).subject == "Rate 1 colleague by 9 Dec"


def test_deadlines_are_shown_on_the_readers_calendar_day() -> None:
    # 20:00 UTC on the 8th is already the 9th in Beijing: the mail must say the 9th.
    due = "2026-12-08T20:00:00+00:00"
    context = {"cycle_id": 1, "period": "2026-Q4", "name": "王伟", "due_at": due, "indicators": 9}
    zh = render("goals_to_agree", "zh-CN", context)
    assert zh.subject == "请在 12月9日前确认您的2026年第四季度绩效目标"
    assert "2026年12月9日 04:00（UTC+08:00）" in zh.text
    en = render("goals_to_agree", "en", context)
    assert en.subject == "Agree your Q4 2026 goals by 9 Dec"
    assert "9 Dec 2026, 04:00 (UTC+08:00)" in en.html


def test_the_display_time_zone_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFCYCLE_MAIL_TIMEZONE", "UTC")
    get_settings.cache_clear()
    context = {
        "cycle_id": 1,
        "period": "2026-11",
        "name": "Wei",
        "indicators": 9,
        "due_at": "2026-12-08T20:00:00+00:00",
    }
    mail = render("goals_to_agree", "en", context)
    assert mail.subject == "Agree your Nov 2026 goals by 8 Dec"
    assert "8 Dec 2026, 20:00 (UTC)" in mail.text


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("en", "en"),
        ("en-GB", "en"),
        ("en_US", "en"),
        ("zh-CN", "zh-CN"),
        ("zh", "zh-CN"),
        ("fr", "zh-CN"),
        ("", "zh-CN"),
    ],
)
def test_unknown_locales_fall_back_to_chinese(asked: str, served: str) -> None:
    mail = render("results_released", asked, {"cycle_id": 1, "period": "2026", "name": "W"})
    assert UI[served]["auto"] in mail.text
    assert f'<html lang="{served}">' in mail.html


def test_typed_text_is_escaped_in_html_and_verbatim_in_text() -> None:
    comment = '<script>alert("x")</script> & <a href="http://evil">click</a>'
    mail = render("goals_returned", "en", {"cycle_id": 1, "comment": comment, "name": "W"})
    assert comment in mail.text
    assert "<script>" not in mail.html and escaped(comment) in mail.html


# ---------------------------------------------------------------- strictness and overrides


def test_every_template_exists_in_both_languages_with_all_three_parts() -> None:
    missing = [
        f"{loc}/{name}.{part}.j2"
        for loc in LOCALES
        for name in TEMPLATES
        for part in PARTS
        if not (PACKAGED_DIR / loc / f"{name}.{part}.j2").is_file()
    ]
    assert missing == []


def test_a_packaged_template_given_too_little_context_raises() -> None:
    with pytest.raises(UndefinedError, match="ratees"):
        render("evaluation_assigned", "en", {"cycle_id": 1, "due_at": "2026-12-09", "name": "W"})


def test_a_template_using_a_missing_variable_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "en/results_released.txt.j2", "Dear {{ name }},\nYour bonus: {{ bonus }}.\n")
    use_override(monkeypatch, tmp_path)
    # The relay stores this message on the failed row: it names the file and line to fix.
    where = re.escape(f"{tmp_path}/en/results_released.txt.j2:2: 'bonus' is undefined")
    with pytest.raises(UndefinedError, match=where):
        render("results_released", "en", {"cycle_id": 1, "period": "2026-Q4", "name": "W"})


def test_a_missing_override_folder_is_an_error_not_a_silent_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_override(monkeypatch, tmp_path / "typo")
    with pytest.raises(InvalidInput, match="PERFCYCLE_MAIL_TEMPLATES_DIR: mail template folder"):
        render("results_released", "en", {"cycle_id": 1, "period": "2026-Q4", "name": "W"})


def test_an_unknown_time_zone_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFCYCLE_MAIL_TIMEZONE", "Mars/Olympus")
    get_settings.cache_clear()
    context = {"period": "2026", "name": "W", "indicators": 3, "due_at": "2026-12-09T09:00:00Z"}
    with pytest.raises(InvalidInput, match="PERFCYCLE_MAIL_TIMEZONE: 'Mars/Olympus' is not"):
        render("goals_to_agree", "en", context)


def test_the_override_folder_wins_over_the_packaged_templates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = {"cycle_id": 1, "period": "2026-Q4", "name": "Wei"}
    packaged = render("results_released", "en", context)
    write(tmp_path, "en/results_released.subject.j2", "ACME: {{ period|period }} results\n")
    write(tmp_path, "_layout.html.j2", "<html><body>ACME {% block content %}{% endblock %}</body>")
    use_override(monkeypatch, tmp_path)

    mail = render("results_released", "en", context)
    assert mail.subject == "ACME: Q4 2026 results"
    assert mail.html.startswith("<html><body>ACME ") and "calibration committee" in mail.html
    assert mail.text == packaged.text
    assert render("results_released", "zh-CN", context).subject.startswith("您的")


def test_a_template_an_organisation_adds_in_chinese_only_reaches_english_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for part in ("subject", "txt", "html"):
        write(tmp_path, f"zh-CN/safety_briefing.{part}.j2", "请参加 {{ name }} 安全培训\n")
    use_override(monkeypatch, tmp_path)
    assert render("safety_briefing", "en", {"name": "W"}).subject == "请参加 W 安全培训"


def test_unknown_or_malformed_template_names_are_not_found() -> None:
    with pytest.raises(TemplateNotFound):
        render("no_such_mail", "en", {})
    with pytest.raises(TemplateNotFound):
        render("../../settings", "en", {})


# ---------------------------------------------------------------- MIME


def queued_row(session: Session, recipient: str, occurrence: str) -> OutboxMessage:
    mail = outbox.Mail(
        cycle_id=None,
        recipient_id=None,
        recipient_email=recipient,
        locale="zh-CN",
        template="evaluation_assigned",
        occurrence=occurrence,
        context={
            "cycle_id": 3,
            "stage": "evaluation",
            "due_at": "2026-12-09T01:00:00+00:00",
            "ratees": ratees(6),
            "count": 6,
            "name": "王伟",
            "link": "http://portal.test/t/tok_EN-1",
        },
    )
    outbox.enqueue(session, [mail])
    return session.scalars(
        select(OutboxMessage).where(OutboxMessage.idempotency_key == mail.idempotency_key)
    ).one()


def parsed(message: EmailMessage) -> EmailMessage:
    parsed = message_from_bytes(message.as_bytes(), policy=email_policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_the_message_is_multipart_alternative_in_utf8(session: Session) -> None:
    row = queued_row(session, "wang.wei@example.com", "evaluation:1")
    rendered = render(row.template, row.locale, row.context)
    message = parsed(build_message(row, rendered, "perfcycle <perfcycle@hr.example.com>"))

    assert message.get_content_type() == "multipart/alternative"
    plain, rich = list(message.iter_parts())
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"
    assert plain.get_content() == rendered.text
    assert rich.get_content() == rendered.html
    assert "http://portal.test/t/tok_EN-1" in plain.get_content()
    assert message["Subject"] == "请在 12月9日前完成 6 位同事的评价"
    assert message["To"] == "wang.wei@example.com"
    assert message["From"].addresses[0].addr_spec == "perfcycle@hr.example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Perfcycle-Key"] == row.idempotency_key
    assert message["Content-Language"] == "zh-CN"
    assert message["Date"].datetime.tzinfo is not None
    # SMTP's hard limit: a longer line is cut or rejected on the way.
    raw = build_message(row, rendered, "a@b.c").as_bytes()
    assert max(len(line) for line in raw.split(b"\n")) <= 998


def test_message_id_follows_the_outbox_key(session: Session) -> None:
    first = queued_row(session, "wang.wei@example.com", "evaluation:1")
    second = queued_row(session, "wang.wei@example.com", "evaluation:2")
    rendered = render(first.template, first.locale, first.context)
    sender = "perfcycle@hr.example.com"

    one = parsed(build_message(first, rendered, sender))["Message-ID"]
    again = parsed(build_message(first, rendered, sender))["Message-ID"]
    other = parsed(build_message(second, rendered, sender))["Message-ID"]
    assert one == again != other
    # A whole, valid msg-id: Python's parser used to cut keys at ':'.
    assert re.fullmatch(r"<[0-9a-f]{32}@hr\.example\.com>", str(one))


def test_the_calibration_mail_says_why_each_reader_gets_it() -> None:
    context = {
        "cycle_id": 1,
        "period": "2026-Q4",
        "due_at": "2027-01-20T10:00:00+00:00",
        "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/x",
        "policy": "professional-support",
        "distribution": {"A": 4, "B": 8, "C": 6, "D": 2, "E": 0},
        "outliers": 1,
        "flags": 0,
        "name": "Committee",
    }
    for locale, committee, hr in (
        ("en", "you sit on the calibration committee", "a copy of this email as HR"),
        ("zh-CN", "校准委员会的成员", "人力资源部收到此邮件的副本"),
    ):
        member = render("calibration_ready", locale, {**context, "role": "committee"})
        copy = render("calibration_ready", locale, {**context, "role": "hr"})
        assert committee in member.text and committee in member.html and hr not in member.text
        assert hr in copy.text and hr in copy.html and committee not in copy.text
