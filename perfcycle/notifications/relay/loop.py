"""One relay pass (claim a batch, send it in rate-limited chunks, record), and the loop of passes
until nothing is due."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.settings import Settings, get_settings
from perfcycle.notifications.relay.claims import (
    Claimed,
    claim_batch,
    default_worker_id,
    release_stale_claims,
    renew_claims,
    unclaim,
)
from perfcycle.notifications.relay.outcomes import Outcome, RelayReport, record_outcomes
from perfcycle.notifications.relay.render_pool import RenderPool, render_processes
from perfcycle.notifications.relay.smtp import send_batch

DEFAULT_BATCH = 200
# With a send-rate cap, a batch goes out in chunks of about this many seconds' worth, each one
# recorded as soon as it is sent and the rest of the batch's claims renewed before the next.
CHUNK_SECONDS = 10.0

Throttle = Callable[[int], None]
_T = TypeVar("_T")


def relay_once(
    url: str | None = None,
    worker_id: str | None = None,
    limit: int = DEFAULT_BATCH,
    throttle: Throttle | None = None,
    settings: Settings | None = None,
    renderers: RenderPool | None = None,
) -> RelayReport:
    """Claim one batch of due rows, send it, record the outcomes. An empty report: nothing due.

    Under a send-rate cap the batch goes in chunks (chunk_size): before each, the rate limit
    is waited for and the rest of the batch's claims are renewed (a row another relay took
    back meanwhile is left to it), and each chunk's outcomes are recorded once it is sent. If
    the relay is interrupted, what was already delivered is recorded and the rest handed back.
    """
    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    max_attempts = settings.mail_max_attempts
    with session_scope(url) as session:
        now = clock.now()
        release_stale_claims(session, now, max_attempts=max_attempts)
        batch = [Claimed.of(row) for row in claim_batch(session, worker_id, limit, now)]
    if not batch:
        return RelayReport()
    report = RelayReport()
    size = chunk_size(settings, len(batch))
    try:
        executor = renderers.for_batch(len(batch)) if renderers else None
        for start in range(0, len(batch), size):
            if throttle is not None:
                throttle(len(batch[start : start + size]))
            with session_scope(url) as session:
                ours = renew_claims(session, [r.id for r in batch[start:]], worker_id, clock.now())
            chunk = [row for row in batch[start : start + size] if row.id in ours]
            outcomes: list[Outcome] = []
            try:
                run_coroutine(send_batch(chunk, settings, executor, outcomes))
            finally:
                with session_scope(url) as session:
                    report += record_outcomes(session, outcomes, clock.now(), max_attempts)
    except BaseException:
        # Interrupted: rows not yet sent go back at once rather than waiting for their claim to
        # expire (unclaim leaves the rows recorded above alone: they are no longer 'sending').
        with session_scope(url) as session:
            unclaim(session, [row.id for row in batch], worker_id)
        raise
    return report


def chunk_size(settings: Settings, rows: int) -> int:
    """How many of a batch's rows go between two waits for the rate limit (all, uncapped)."""
    rate = settings.mail_rate_per_second
    if rate <= 0:
        return max(1, rows)
    return max(1, math.ceil(rate * CHUNK_SECONDS))


def relay_until_idle(
    url: str | None = None,
    worker_id: str | None = None,
    limit: int = DEFAULT_BATCH,
    budget_s: float | None = None,
    throttle: Throttle | None = None,
    settings: Settings | None = None,
) -> RelayReport:
    """relay_once until nothing is due or the time budget is spent."""
    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    deadline = None if budget_s is None else time.monotonic() + budget_s
    total = RelayReport()
    with RenderPool(render_processes(settings)) as renderers:
        while deadline is None or time.monotonic() < deadline:
            report = relay_once(url, worker_id, limit, throttle, settings, renderers)
            if report.handled == 0:
                break
            total += report
    return total


def run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run, also when the caller already runs an event loop (an async flow, a notebook):
    then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
