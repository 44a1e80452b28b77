"""The mail relay's work in Prefect: the SMTP rate limit, and one task that drains the outbox.

One task run per relay run, however many messages: relay_until_idle loops over batches inside it.
"""

from __future__ import annotations

import math
from contextlib import suppress
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import rate_limit
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectAlreadyExists

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.notifications import outbox, relay

RATE_LIMIT = "perfcycle-smtp"


def rate_limit_shape(rate_per_second: float) -> tuple[int, float] | None:
    """(slots, decay per second) of the global limit for a rate; None means unlimited.

    Slots decay at the rate, so a sustained rate of `rate` messages per second gets through,
    with bursts of at most `slots` (one second's worth)."""
    if rate_per_second <= 0:
        return None
    return max(1, math.ceil(rate_per_second)), float(rate_per_second)


@task(name="ensure-smtp-rate-limit")
def ensure_rate_limit() -> int | None:
    """Create (or align with the settings) the global concurrency limit the relay occupies.

    Returns its slots, None when mail_rate_per_second is 0 (no limit)."""
    shape = rate_limit_shape(get_settings().mail_rate_per_second)
    if shape is None:
        return None
    slots, decay = shape
    # ObjectAlreadyExists: another relay run created it between the upsert's read and create.
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(RATE_LIMIT, slots, decay)
    return slots


def prefect_throttle(slots: int) -> relay.Throttle:
    """Occupy one slot per message; strict, so a missing limit fails instead of not limiting."""

    def wait(messages: int) -> None:
        remaining = messages
        while remaining > 0:
            # Never ask for more than the limit holds: such a request could never be granted.
            occupy = min(remaining, slots)
            rate_limit(RATE_LIMIT, occupy=occupy, strict=True)
            remaining -= occupy

    return wait


def _worker_id() -> str:
    context = TaskRunContext.get()
    if context is not None and context.task_run is not None:
        return f"prefect:{context.task_run.id}"
    return relay.default_worker_id()


@task(name="relay-mail")
def relay_mail(batch_size: int, budget_s: float, slots: int | None) -> dict[str, Any]:
    """Send due mail until none is due or the budget is spent; publish what happened."""
    throttle = prefect_throttle(slots) if slots else None
    report = relay.relay_until_idle(
        worker_id=_worker_id(), limit=batch_size, budget_s=budget_s, throttle=throttle
    )
    with session_scope() as session:
        counts = outbox.state_counts(session)
    summary = {
        "sent": report.sent,
        "retried": report.retried,
        "failed": report.failed,
        "batches": report.batches,
        "failed_ids": list(report.failed_ids),
        "outbox": counts,
    }
    get_run_logger().info(
        "Mail relay: %s sent, %s to retry, %s failed in %s batch(es); outbox now %s",
        report.sent,
        report.retried,
        report.failed,
        report.batches,
        counts,
    )
    create_markdown_artifact(
        key="mail-relay", markdown=relay_markdown(summary), description="Mail relay run"
    )
    return summary


def relay_markdown(summary: dict[str, Any]) -> str:
    counts = summary["outbox"]
    lines = [
        "## Mail relay",
        "",
        "| this run | messages |",
        "|---|---:|",
        f"| sent | {summary['sent']} |",
        f"| to retry later (temporary failure) | {summary['retried']} |",
        f"| failed for good | {summary['failed']} |",
        "",
        "| outbox now | messages |",
        "|---|---:|",
        *(f"| {state} | {n} |" for state, n in counts.items()),
    ]
    if summary["failed_ids"]:
        shown = ", ".join(map(str, summary["failed_ids"][:50]))
        lines += ["", f"Failed in this run: {shown}. See `perfcycle outbox list --failed`."]
    return "\n".join(lines) + "\n"
