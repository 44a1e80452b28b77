"""The mail relay: claim due outbox rows, render and send them over SMTP, record what happened.

A row goes pending -> sending (claimed by one relay) -> sent | pending again (temporary failure,
retried with backoff) | failed (permanent failure, or too many attempts).

- `claims`: which relay sends which row; stale claims go back to pending.
- `smtp`: rendering a row to wire bytes and sending over a few SMTP sessions at once.
- `render_pool`: the processes that render big batches while the relay sends.
- `outcomes`: writing what each attempt came to (backoff, final failures audited).
- `loop`: one relay pass, and passes until nothing is due.

No Prefect here: flows/mail_relay.py runs `relay_until_idle` with Prefect's global rate limit as
the throttle; the bench and the tests call it directly. Callers use `relay.X`; the names below
are the package's public surface.
"""

from __future__ import annotations

from perfcycle.notifications.relay.claims import (
    STALE_CLAIM,
    Claimed,
    OutboxRow,
    claim_batch,
    default_worker_id,
    newest_pending_id,
    release_stale_claims,
    renew_claims,
    unclaim,
)
from perfcycle.notifications.relay.loop import (
    CHUNK_SECONDS,
    DEFAULT_BATCH,
    Throttle,
    chunk_size,
    relay_once,
    relay_until_idle,
    run_coroutine,
)
from perfcycle.notifications.relay.outcomes import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    BACKOFF_JITTER,
    ERROR_MAX_CHARS,
    Outcome,
    RelayReport,
    Status,
    backoff,
    record_outcomes,
)
from perfcycle.notifications.relay.render_pool import (
    RENDER_POOL_MIN_ROWS,
    RenderPool,
    render_processes,
    start_renderer,
)
from perfcycle.notifications.relay.smtp import (
    AUTHENTICATION_REQUIRED,
    RENDER_CHUNK,
    prepare,
    prepare_many,
    send_batch,
)

__all__ = [
    "AUTHENTICATION_REQUIRED",
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "BACKOFF_JITTER",
    "CHUNK_SECONDS",
    "DEFAULT_BATCH",
    "ERROR_MAX_CHARS",
    "RENDER_CHUNK",
    "RENDER_POOL_MIN_ROWS",
    "STALE_CLAIM",
    "Claimed",
    "Outcome",
    "OutboxRow",
    "RelayReport",
    "RenderPool",
    "Status",
    "Throttle",
    "backoff",
    "chunk_size",
    "claim_batch",
    "default_worker_id",
    "newest_pending_id",
    "prepare",
    "prepare_many",
    "record_outcomes",
    "relay_once",
    "relay_until_idle",
    "release_stale_claims",
    "render_processes",
    "renew_claims",
    "run_coroutine",
    "send_batch",
    "start_renderer",
    "unclaim",
]
