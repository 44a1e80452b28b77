"""The auditor's read-only view of the audit log, with the result of verifying its hash chain."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from perfcycle.domain import access
from perfcycle.web import i18n
from perfcycle.web.deps import PageError, SessionDep, Viewer, render, require_roles
from perfcycle.web.queries.audit import AuditFilter, audit_actions, audit_page, verify_chain

router = APIRouter()

i18n.add_messages(
    {
        "audit.title": {"zh-CN": "审计日志", "en": "Audit log"},
        "audit.chain_ok": {
            "zh-CN": "哈希链校验通过：{n} 条记录均未被篡改。",
            "en": "Hash chain verified: all {n} events are intact.",
        },
        "audit.chain_broken": {
            "zh-CN": "哈希链校验失败：第 {id} 条记录 — {problem}",
            "en": "Hash chain broken at event {id}: {problem}",
        },
        "audit.cycle": {"zh-CN": "周期", "en": "Cycle"},
        "audit.person": {"zh-CN": "人员（操作人或对象）", "en": "Person (actor or subject)"},
        "audit.action": {"zh-CN": "操作", "en": "Action"},
        "audit.any": {"zh-CN": "全部", "en": "any"},
        "audit.filter": {"zh-CN": "筛选", "en": "Filter"},
        "audit.at": {"zh-CN": "时间", "en": "Time"},
        "audit.actor": {"zh-CN": "操作人", "en": "Actor"},
        "audit.subject": {"zh-CN": "对象", "en": "Subject"},
        "audit.change": {"zh-CN": "变更", "en": "Change"},
        "audit.count": {
            "zh-CN": "共 {total} 条，第 {page}/{pages} 页",
            "en": "{total} events, page {page} of {pages}",
        },
        "audit.newer": {"zh-CN": "较新", "en": "Newer"},
        "audit.older": {"zh-CN": "较早", "en": "Older"},
        "audit.none": {"zh-CN": "没有符合条件的记录。", "en": "No events match."},
    }
)

Auditor = Annotated[Viewer, Depends(require_roles(*access.READS_AUDIT_LOG))]


def parse_filter(cycle: str, person: str, action: str) -> AuditFilter:
    cycle = cycle.strip()
    if cycle and not cycle.isdigit():
        raise PageError(400, "bad_request", f"cycle: expected a number, got {cycle!r}")
    return AuditFilter(int(cycle) if cycle else None, person.strip(), action.strip())


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    session: SessionDep,
    _viewer: Auditor,
    cycle: str = "",
    person: str = "",
    action: str = "",
    page: int = 1,
) -> HTMLResponse:
    wanted = parse_filter(cycle, person, action)
    report = verify_chain(session)
    found = audit_page(session, wanted, page)
    query = {"cycle": cycle, "person": person, "action": action}

    def page_url(number: int) -> str:
        return "/audit?" + urlencode({**query, "page": number})

    return render(
        request,
        "audit.html",
        {
            "report": report,
            "found": found,
            "wanted": wanted,
            "actions": audit_actions(session),
            "page_url": page_url,
        },
    )
