"""HR's progress view of a cycle: completion per stage and department, who is overdue, remind now,
and the cycle's mail that could not be delivered.

"Remind now" writes one reminder mail per person with pending work through
perfcycle.notifications.notify
(the outbox), keyed by the minute: a double click sends nothing twice. Undelivered mail is
listed with the SMTP server's reply; "retry" re-queues it through
perfcycle.notifications.outbox.requeue, the
same step as `perfcycle outbox retry`.

Auditors read both pages too (read-only: they check HR's work, they do not do it): the remind and
retry forms are rendered only for HR admins, and their POST routes admit HR admins only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from perfcycle.core import clock
from perfcycle.core.settings import get_settings
from perfcycle.domain import access, audit, status
from perfcycle.domain.models import Cycle
from perfcycle.notifications import outbox, reminders
from perfcycle.web import i18n
from perfcycle.web.deps import (
    CsrfForm,
    PageError,
    SessionDep,
    Viewer,
    locale_of,
    render,
    require_roles,
)
from perfcycle.web.pages import load_cycle
from perfcycle.web.queries.hr_progress import hr_progress

router = APIRouter()

i18n.add_messages(
    {
        "hr.title": {"zh-CN": "考核进度", "en": "Cycle progress"},
        "hr.cycles": {"zh-CN": "考核周期", "en": "Cycles"},
        "hr.stage": {"zh-CN": "阶段", "en": "Stage"},
        "hr.state": {"zh-CN": "状态", "en": "State"},
        "hr.due": {"zh-CN": "截止", "en": "Due"},
        "hr.done": {"zh-CN": "完成", "en": "Done"},
        "hr.department": {"zh-CN": "部门", "en": "Department"},
        "hr.overdue": {"zh-CN": "逾期未完成", "en": "Overdue"},
        "hr.no_overdue": {"zh-CN": "没有逾期任务。", "en": "Nothing is overdue."},
        "hr.person": {"zh-CN": "人员", "en": "Person"},
        "hr.task": {"zh-CN": "任务", "en": "Task"},
        "hr.remind": {"zh-CN": "立即发送提醒", "en": "Remind now"},
        "hr.remind_intro": {
            "zh-CN": "向当前阶段所有未完成任务的人员发送提醒邮件（通过发件队列）。",
            "en": "Mail a reminder to everyone with unfinished work in the open stages "
            "(through the outbox).",
        },
        "hr.reminded": {"zh-CN": "已排队 {n} 封提醒邮件。", "en": "{n} reminder mails queued."},
        "hr.flow_run": {"zh-CN": "在 Prefect 中查看流程运行", "en": "Open the flow run in Prefect"},
        "hr.no_cycles": {"zh-CN": "还没有考核周期。", "en": "No cycles yet."},
        "hr.mail": {"zh-CN": "邮件", "en": "Mail"},
        "hr.mail_counts": {
            "zh-CN": "已发送 {sent} 封，待发送 {pending} 封，发送失败 {failed} 封。",
            "en": "{sent} sent, {pending} waiting to be sent, {failed} undelivered.",
        },
        "hr.mail_failed_intro": {
            "zh-CN": "以下邮件无法投递（邮件服务器的答复见右栏）。请先修正原因（如邮箱地址），"
            "再选择重新发送。",
            "en": "These mails could not be delivered; the mail server's reply is on the right. "
            "Fix the cause (an address, say), then send them again.",
        },
        "hr.recipient": {"zh-CN": "收件人", "en": "Recipient"},
        "hr.template": {"zh-CN": "邮件类型", "en": "Mail"},
        "hr.attempts": {"zh-CN": "尝试次数", "en": "Attempts"},
        "hr.reply": {"zh-CN": "服务器答复", "en": "Server's reply"},
        "hr.retry": {"zh-CN": "重新发送所选邮件", "en": "Send the selected mails again"},
        "hr.retry_none": {"zh-CN": "请至少选择一封邮件。", "en": "Choose at least one mail."},
        "hr.read_only": {
            "zh-CN": "您以审计员身份只读查看：提醒和重新发送仅限人力资源管理员操作。",
            "en": "Read-only view for auditors: only HR administrators send reminders or "
            "retry mail.",
        },
        "hr.mail_failed_intro_read_only": {
            "zh-CN": "以下邮件无法投递（邮件服务器的答复见右栏）。",
            "en": "These mails could not be delivered; the mail server's reply is on the right.",
        },
        "hr.mail_no_cycle": {
            "zh-CN": "未投递的提醒汇总与登录链接邮件",
            "en": "Undelivered reminder digests and sign-in links",
        },
        "hr.retried": {
            "zh-CN": "已重新排队 {n} 封邮件，将在一分钟内发送。",
            "en": "{n} mails re-queued; they go out within a minute.",
        },
    }
)

# Who acts on a cycle's progress (remind, retry), and who may read it.
ACTING_ROLES = access.ACTS_ON_PROGRESS
READING_ROLES = access.READS_PROGRESS
HrAdmin = Annotated[Viewer, Depends(require_roles(*ACTING_ROLES))]
HrReader = Annotated[Viewer, Depends(require_roles(*READING_ROLES))]


@router.get("/hr/cycles", response_class=HTMLResponse)
def cycle_list(
    request: Request,
    session: SessionDep,
    viewer: HrReader,
) -> HTMLResponse:
    return render(
        request,
        "hr_cycles.html",
        {
            "cycles": status.cycle_list(session),
            "may_act": viewer.has(*ACTING_ROLES),
            "retried": _count_param(request, "retried"),
            # Reminder digests span cycles and sign-in links have none: listed here.
            "failed_mail": outbox.outbox_rows(session, failed_only=True, without_cycle=True),
        },
    )


@router.get("/hr/cycles/{cycle_id}", response_class=HTMLResponse)
def progress_page(
    request: Request,
    cycle_id: int,
    session: SessionDep,
    viewer: HrReader,
) -> HTMLResponse:
    cycle = load_cycle(session, request, cycle_id)
    progress = hr_progress(session, cycle, clock.now(), locale_of(request))
    flow_run_url = (
        f"{get_settings().prefect_ui_url.rstrip('/')}/runs/flow-run/{cycle.flow_run_id}"
        if cycle.flow_run_id
        else None
    )
    return render(
        request,
        "hr_progress.html",
        {
            "progress": progress,
            # The forms follow the POST routes' rule; hiding them is a courtesy, not the check.
            "may_act": viewer.has(*ACTING_ROLES),
            "flow_run_url": flow_run_url,
            "reminded": _count_param(request, "reminded"),
            "retried": _count_param(request, "retried"),
            "mail_counts": outbox.state_counts(session, cycle.id),
            "failed_mail": outbox.outbox_rows(session, failed_only=True, cycle_id=cycle.id),
        },
    )


def _count_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value and value.isdigit() else None


@router.post("/hr/cycles/{cycle_id}/remind")
def remind_now(
    request: Request,
    cycle_id: int,
    session: SessionDep,
    viewer: HrAdmin,
    _form: CsrfForm,
) -> Response:
    cycle = load_cycle(session, request, cycle_id)
    if cycle.state != "running":
        raise PageError(409, "pages.stage_closed", f"cycle {cycle.id} is {cycle.state}")
    queued = enqueue_manual_reminders(session, cycle, actor=viewer.person_id)
    return RedirectResponse(f"/hr/cycles/{cycle.id}?reminded={queued}", status_code=303)


@router.post("/hr/cycles/{cycle_id}/mail/retry")
def retry_mail(
    request: Request,
    cycle_id: int,
    session: SessionDep,
    viewer: HrAdmin,
    form: CsrfForm,
) -> Response:
    cycle = load_cycle(session, request, cycle_id)
    # All-or-nothing; an id of another cycle's mail is refused as unknown (422, nothing changes).
    requeued = outbox.requeue(
        session, _message_ids(request, form), actor=viewer.person_id, cycle_id=cycle.id
    )
    return RedirectResponse(f"/hr/cycles/{cycle.id}?retried={len(requeued)}", status_code=303)


@router.post("/hr/mail/retry")
def retry_mail_of_no_cycle(
    request: Request,
    session: SessionDep,
    viewer: HrAdmin,
    form: CsrfForm,
) -> Response:
    """Reminder digests and sign-in links that failed: they belong to no one cycle."""
    requeued = outbox.requeue(
        session, _message_ids(request, form), actor=viewer.person_id, without_cycle=True
    )
    return RedirectResponse(f"/hr/cycles?retried={len(requeued)}", status_code=303)


def _message_ids(request: Request, form: FormData) -> list[int]:
    ids = [_message_id(value) for value in form.getlist("message")]
    if not ids:
        raise PageError(422, "invalid_input", i18n.translate("hr.retry_none", locale_of(request)))
    return ids


def _message_id(value: object) -> int:
    if not isinstance(value, str) or not value.strip().isdigit():
        raise PageError(400, "bad_form", f"message: expected a mail id, got {value!r}")
    return int(value)


def enqueue_manual_reminders(session: Session, cycle: Cycle, *, actor: str) -> int:
    """One `reminder` mail per person with pending work in the cycle's open stages."""
    people, queued = reminders.remind_now(session, cycle.id, clock.now())
    audit.record(
        session,
        actor=actor,
        action="reminders.sent_now",
        subject=f"cycle:{cycle.id}",
        cycle_id=cycle.id,
        after={"people": people, "mails": queued},
    )
    return queued
