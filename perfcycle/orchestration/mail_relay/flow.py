"""mail-relay: send what the outbox holds (deployment mail-relay/every-minute).

Runs every minute and right after a stage writes mail. Several runs at once are safe: each row
is claimed by one relay. A run stops when nothing is due or its time budget (under the
schedule's interval) is spent; the next run carries on.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from perfcycle.orchestration.mail_relay.tasks import ensure_rate_limit, relay_mail


@flow(name="mail-relay", persist_result=False)
def mail_relay(batch_size: int = 200, time_budget_s: float = 50.0) -> dict[str, Any]:
    slots = ensure_rate_limit()
    return relay_mail(batch_size, time_budget_s, slots)
