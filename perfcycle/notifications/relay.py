"""The mail relay: claim due outbox rows, render and send them over SMTP, record what happened.

A row goes pending -> sending (claimed by one relay) -> sent | pending again (temporary failure,
retried with backoff) | failed (permanent failure, or too many attempts). The claim is what lets
several relays run at once without sending a row twice: FOR UPDATE SKIP LOCKED on PostgreSQL,
one UPDATE ... RETURNING under SQLite's BEGIN IMMEDIATE. A relay that dies mid-batch leaves rows
in `sending`; once the claim is older than STALE_CLAIM they go back to pending.

No Prefect here: flows/mail_relay.py runs `relay_until_idle` with Prefect's global rate limit as
the throttle; the bench and the tests call it directly.
"""

from __future__ import annotations

import asyncio
import email.policy
import math
import multiprocessing
import os
import random
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool as BrokenExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.parser import BytesParser
from email.utils import parseaddr
from typing import Any, Literal, Protocol, TypeVar, cast

import aiosmtplib
from aiosmtplib.email import flatten_message
from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import Settings, get_settings
from perfcycle.domain import audit
from perfcycle.domain.models import OutboxMessage
from perfcycle.notifications.notify import without_links
from perfcycle.notifications.render import MailRow, build_message, render

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
BACKOFF_JITTER = 0.2
# Longer than any batch can take to send, so only a relay that died leaves a claim this old.
STALE_CLAIM = timedelta(minutes=15)
DEFAULT_BATCH = 200
# With a send-rate cap, a batch goes out in chunks of about this many seconds' worth, each one
# recorded as soon as it is sent and the rest of the batch's claims renewed before the next.
CHUNK_SECONDS = 10.0
ERROR_MAX_CHARS = 2000
RENDER_CHUNK = 20
# Below this many rows a batch renders in-process: starting render processes costs ~1 s.
RENDER_POOL_MIN_ROWS = 100
# RFC 4954: the server wants a login (or TLS first) whatever the message; our configuration.
AUTHENTICATION_REQUIRED = 530

Status = Literal["sent", "temporary", "permanent"]
Throttle = Callable[[int], None]
_T = TypeVar("_T")
# Deliberately plain: anything that would make an SMTP envelope or a header ambiguous is out.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")


class OutboxRow(MailRow, Protocol):
    """What sending needs of a claimed row (OutboxMessage and Claimed both fit)."""

    @property
    def id(self) -> int: ...
    @property
    def context(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...


@dataclass(frozen=True)
class Claimed:
    """A claimed row, detached from its session so it can cross threads and event loops."""

    id: int
    idempotency_key: str
    recipient_email: str
    locale: str
    template: str
    context: dict[str, Any]
    attempts: int

    @classmethod
    def of(cls, row: OutboxRow) -> Claimed:
        if isinstance(row, Claimed):
            return row
        return cls(
            row.id,
            row.idempotency_key,
            row.recipient_email,
            row.locale,
            row.template,
            dict(row.context or {}),
            row.attempts,
        )


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to. `attempts` is the row's count before this attempt."""

    id: int
    attempts: int
    status: Status
    error: str | None = None
    # False when no SMTP server could be reached: an outage, however long, is not the message's
    # fault, so it never uses up the message's attempts (the backoff still grows to its cap).
    reached_server: bool = True


@dataclass(frozen=True)
class RelayReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    batches: int = 0
    failed_ids: tuple[int, ...] = field(default=())

    @property
    def handled(self) -> int:
        return self.sent + self.retried + self.failed

    def __add__(self, other: RelayReport) -> RelayReport:
        return RelayReport(
            self.sent + other.sent,
            self.retried + other.retried,
            self.failed + other.failed,
            self.batches + other.batches,
            self.failed_ids + other.failed_ids,
        )


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- claiming


def claim_batch(session: Session, worker_id: str, limit: int, now: datetime) -> list[OutboxMessage]:
    """Claim up to `limit` due pending rows, oldest first, for this worker; commit to publish."""
    table = OutboxMessage
    due = (
        select(table.id)
        .where(table.state == "pending")
        .where(or_(table.next_attempt_at.is_(None), table.next_attempt_at <= now))
        .order_by(table.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Rows another relay holds are skipped, not waited for: relays share the queue.
        ids = list(session.scalars(due.with_for_update(skip_locked=True)))
        if not ids:
            return []
        claimable = table.id.in_(ids)
    else:
        # SQLite: the transaction began with BEGIN IMMEDIATE, so no other writer runs between
        # this statement's read and its write.
        claimable = table.id.in_(due.scalar_subquery())
    claim = (
        update(table)
        .where(claimable, table.state == "pending")
        .values(state="sending", claimed_by=worker_id, claimed_at=now)
        .returning(table)
        .execution_options(synchronize_session=False)
    )
    rows = list(session.scalars(claim))
    return sorted(rows, key=lambda row: row.id)


def release_stale_claims(
    session: Session, now: datetime, older_than: timedelta = STALE_CLAIM, max_attempts: int = 10
) -> int:
    """Rows claimed by a relay that stopped go back to pending (or fail, once out of attempts).

    Counted as an attempt: a message that kills the relay every time must not loop for ever.
    """
    table = OutboxMessage
    cutoff = now - older_than
    stale = (table.state == "sending", table.claimed_at < cutoff)
    reason = "claim expired: the relay sending it stopped before recording the result"
    exhausted = session.scalars(
        update(table)
        .where(*stale, table.attempts + 1 >= max_attempts)
        .values(state="failed", attempts=table.attempts + 1, last_error=reason)
        .returning(table.id)
        .execution_options(synchronize_session=False)
    ).all()
    released = session.scalars(
        update(table)
        .where(*stale)
        .values(
            state="pending",
            attempts=table.attempts + 1,
            next_attempt_at=now,
            claimed_by=None,
            claimed_at=None,
            last_error=reason,
        )
        .returning(table.id)
        .execution_options(synchronize_session=False)
    ).all()
    if exhausted or released:
        audit.record(
            session,
            actor=audit.SYSTEM,
            action="outbox.claims_expired",
            subject="outbox",
            after={"requeued": sorted(released), "failed": sorted(exhausted)},
        )
    return len(exhausted) + len(released)


def newest_pending_id(session: Session, cycle_id: int) -> int | None:
    """The newest unsent row of a cycle: what a trigger of the relay is about."""
    return session.scalar(
        select(func.max(OutboxMessage.id)).where(
            OutboxMessage.cycle_id == cycle_id, OutboxMessage.state == "pending"
        )
    )


# ---------------------------------------------------------------- sending


@dataclass(frozen=True)
class _Ready:
    """A rendered message as it goes on the wire (picklable: made in a render process)."""

    row: Claimed
    data: bytes
    utf8: bool


def valid_address(address: str) -> bool:
    return bool(_ADDRESS.match(address or ""))


def prepare(row: OutboxRow, mail_from: str) -> _Ready | Outcome:
    """Render one row; a bad address or a template error is final, never retried silently."""
    if not valid_address(row.recipient_email):
        error = f"invalid address {row.recipient_email!r}"
        return Outcome(row.id, row.attempts, "permanent", error)
    try:
        rendered = render(row.template, row.locale, row.context)
        message = build_message(row, rendered, mail_from)
        utf8 = not row.recipient_email.isascii()
        data = flatten_message(message, utf8=utf8, cte_type="8bit")
    except InvalidInput as exc:
        # The mail settings (template folder, time zone), not this message: retry once fixed.
        return _temporary(row, f"mail settings: {exc}")
    except Exception as exc:
        return Outcome(row.id, row.attempts, "permanent", f"render error: {_describe(exc)}")
    return _Ready(Claimed.of(row), data, utf8)


def prepare_many(rows: Sequence[Claimed], mail_from: str) -> list[_Ready | Outcome]:
    """prepare() for a chunk of rows: what a render process runs."""
    return [prepare(row, mail_from) for row in rows]


def render_processes(settings: Settings) -> int:
    """How many processes render while the relay sends: by default one per CPU beyond the first
    (rendering and building MIME is most of the relay's CPU time); 0 renders in-process."""
    configured = settings.mail_render_processes
    if configured is not None:
        return max(0, int(configured))
    return min(2, (os.cpu_count() or 1) - 1)


def start_renderer(processes: int) -> Executor:
    # spawn, not fork: the relay runs inside Prefect's threaded runner, and forking a process
    # with threads can copy a held lock into the child.
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))


async def send_batch(
    rows: Sequence[OutboxRow],
    settings: Settings,
    renderer: Executor | None = None,
    outcomes: list[Outcome] | None = None,
) -> list[Outcome]:
    """Render and send the rows over at most smtp_max_connections SMTP sessions, each sending
    many messages; one Outcome per row, in row order. Never raises for a delivery error.

    Sessions send while the next messages render (in `renderer`'s processes when given), so
    rendering, our SMTP client and the server all work at once. Each outcome is appended to
    `outcomes` as it happens, so a caller interrupted mid-batch still knows what went out.
    """
    outcomes = [] if outcomes is None else outcomes
    queue: asyncio.Queue[_Ready | None] = asyncio.Queue()
    unreachable: list[str] = []
    count = max(1, min(settings.smtp_max_connections, len(rows)))
    sessions = [
        asyncio.create_task(_session(queue, settings, outcomes, unreachable)) for _ in range(count)
    ]
    try:
        async for prepared in _prepared(rows, settings.mail_from, renderer):
            if isinstance(prepared, Outcome):
                outcomes.append(prepared)
            else:
                queue.put_nowait(prepared)
        for _ in sessions:
            queue.put_nowait(None)
        await asyncio.gather(*sessions)
    finally:
        for task in sessions:
            task.cancel()
    # What sessions that could not connect left behind waits for the next try.
    error = unreachable[0] if unreachable else "not sent: every SMTP session ended"
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            outcomes.append(_temporary(item.row, error, reached_server=not unreachable))
    return sorted(outcomes, key=lambda outcome: outcome.id)


async def _prepared(
    rows: Sequence[OutboxRow], mail_from: str, renderer: Executor | None
) -> AsyncIterator[_Ready | Outcome]:
    claimed = [Claimed.of(row) for row in rows]
    if renderer is None:
        for row in claimed:
            yield prepare(row, mail_from)
            await asyncio.sleep(0)  # let the sessions read replies and send the next command
        return
    loop = asyncio.get_running_loop()
    chunks = [claimed[i : i + RENDER_CHUNK] for i in range(0, len(claimed), RENDER_CHUNK)]
    futures = [loop.run_in_executor(renderer, prepare_many, chunk, mail_from) for chunk in chunks]
    for chunk, future in zip(chunks, futures, strict=True):
        try:
            results = await future
        except BrokenExecutor:
            # A render process died (killed, out of memory): render the rest here.
            results = prepare_many(chunk, mail_from)
        for result in results:
            yield result


async def _session(
    queue: asyncio.Queue[_Ready | None],
    settings: Settings,
    outcomes: list[Outcome],
    unreachable: list[str],
) -> None:
    """One SMTP session: send queued messages until the end marker, reconnecting after a drop.

    A session that cannot connect stops, leaving the queue to the others (a server may accept
    fewer sessions than we open)."""
    sender = parseaddr(settings.mail_from)[1] or settings.mail_from
    smtp: aiosmtplib.SMTP | None = None
    try:
        while (item := await queue.get()) is not None:
            if smtp is None:
                try:
                    smtp = await _connect(settings)
                except Exception as exc:
                    where = f"{settings.smtp_host}:{settings.smtp_port}"
                    error = f"connect to {where}: {_describe(exc)}"
                    unreachable.append(error)
                    outcomes.append(_temporary(item.row, error, reached_server=False))
                    return
            outcome = await _send_one(smtp, item, sender)
            outcomes.append(outcome)
            if outcome.status != "sent" and not smtp.is_connected:
                smtp = None  # e.g. after a 421 the next message opens a fresh session
    finally:
        if smtp is not None:
            await _quit(smtp)


async def _connect(settings: Settings) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username or None,
        password=settings.smtp_password or None,
        use_tls=settings.smtp_tls,
        start_tls=bool(settings.smtp_starttls),
        timeout=settings.smtp_timeout,
    )
    # Logs in too when username and password are set.
    await smtp.connect()
    if smtp.is_ehlo_or_helo_needed:
        # Now, not lazily: _wire_form asks which extensions (8BITMIME, SMTPUTF8) there are.
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()
    return smtp


async def _send_one(smtp: aiosmtplib.SMTP, item: _Ready, sender: str) -> Outcome:
    row = item.row
    try:
        data, options = _wire_form(smtp, item)
        await smtp.sendmail(sender, [row.recipient_email], data, mail_options=options)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0] if exc.recipients else None
        if refused is None:
            return _temporary(row, _describe(exc))
        return _by_code(row, refused.code, f"{refused.code} {refused.message}")
    except aiosmtplib.SMTPSenderRefused as exc:
        # MAIL FROM refused: about our sender or session (TLS or login required), which is
        # configuration, not this message; retry (and fail after max attempts) rather than drop.
        return _temporary(row, f"sender {exc.sender} refused: {exc.code} {exc.message}")
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == AUTHENTICATION_REQUIRED:
            return _temporary(row, f"{exc.code} {exc.message}")
        return _by_code(row, exc.code, f"{exc.code} {exc.message}")
    except aiosmtplib.SMTPNotSupported as exc:
        # The address needs SMTPUTF8 and this server will never offer it.
        return Outcome(row.id, row.attempts, "permanent", _describe(exc))
    except Exception as exc:
        # Disconnects, timeouts, socket errors: nothing says the address is bad, so try again.
        return _temporary(row, _describe(exc))
    return Outcome(row.id, row.attempts, "sent")


def _wire_form(smtp: aiosmtplib.SMTP, item: _Ready) -> tuple[bytes, list[str]]:
    """The message bytes and MAIL options for this server, as aiosmtplib's send_message would
    choose them (it needs the EmailMessage; we only have its bytes, made in a render process)."""
    options: list[str] = []
    data = item.data
    if item.utf8:
        if not smtp.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                f"{item.row.recipient_email} needs SMTPUTF8, which the server does not support"
            )
        options.append("SMTPUTF8")
    if smtp.supports_extension("8BITMIME"):
        options.append("BODY=8BITMIME")
    elif not data.isascii():
        parsed = BytesParser(policy=email.policy.SMTP).parsebytes(data)
        data = flatten_message(parsed, utf8=item.utf8, cte_type="7bit")
    return data, options


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        if smtp.is_connected:
            await smtp.quit()
    except Exception:
        smtp.close()


def _by_code(row: OutboxRow, code: int, reply: str) -> Outcome:
    """RFC 5321: 4yz is transient (greylisting, mailbox busy), 5yz is final for the recipient
    (RCPT) or the message (DATA)."""
    status: Status = "permanent" if 500 <= code < 600 else "temporary"
    return Outcome(row.id, row.attempts, status, reply)


def _temporary(row: OutboxRow, error: str, reached_server: bool = True) -> Outcome:
    return Outcome(row.id, row.attempts, "temporary", error, reached_server)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- recording


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Delay before the next try after `attempts` failed ones: 30 s, 1 min, 2 min ... 1 h,
    +-20% so that rows that failed together do not all come back in the same second."""
    exponent = min(max(attempts - 1, 0), 20)
    base = min(BACKOFF_BASE * (2**exponent), BACKOFF_CAP)
    jitter = 1 + BACKOFF_JITTER * (2 * (rng or random).random() - 1)
    return base * jitter


def record_outcomes(
    session: Session,
    outcomes: Sequence[Outcome],
    now: datetime | None = None,
    max_attempts: int | None = None,
) -> RelayReport:
    """Write the outcomes to the rows; an audit event for each row that failed for good."""
    if not outcomes:
        return RelayReport()
    now = now or clock.now()
    limit = max_attempts or get_settings().mail_max_attempts
    table = cast(Table, OutboxMessage.__table__)
    sent = [o for o in outcomes if o.status == "sent"]
    retry = [
        o
        for o in outcomes
        if o.status == "temporary" and (o.attempts + 1 < limit or not o.reached_server)
    ]
    settled = {o.id for o in sent} | {o.id for o in retry}
    failed = [o for o in outcomes if o.id not in settled]
    if sent:
        # Also from pending: a claim that expired while we were sending is still delivered.
        session.execute(
            update(table)
            .where(
                table.c.id == bindparam("oid"),
                # IN (...) would be an expanding parameter, which executemany refuses.
                or_(table.c.state == "sending", table.c.state == "pending"),
            )
            .values(state="sent", sent_at=now, attempts=bindparam("n"), last_error=None),
            [{"oid": o.id, "n": o.attempts + 1} for o in sent],
        )
        _forget_links(session, [o.id for o in sent])
    if retry:
        session.execute(
            update(table)
            .where(table.c.id == bindparam("oid"), table.c.state == "sending")
            .values(
                state="pending",
                attempts=bindparam("n"),
                next_attempt_at=bindparam("due"),
                last_error=bindparam("err"),
                claimed_by=None,
                claimed_at=None,
            ),
            [
                {
                    "oid": o.id,
                    "n": o.attempts + 1,
                    "due": now + backoff(o.attempts + 1),
                    "err": _clip(o.error),
                }
                for o in retry
            ],
        )
    if failed:
        session.execute(
            update(table)
            .where(table.c.id == bindparam("oid"), table.c.state == "sending")
            .values(state="failed", attempts=bindparam("n"), last_error=bindparam("err")),
            [{"oid": o.id, "n": o.attempts + 1, "err": _final_error(o, limit)} for o in failed],
        )
    _audit_failures(session, failed, limit)
    return RelayReport(len(sent), len(retry), len(failed), 1, tuple(o.id for o in failed))


def _forget_links(session: Session, ids: Sequence[int]) -> None:
    """Blank the task links of delivered rows (see notify.without_links); rows without any are
    left as they are."""
    rows = session.execute(
        select(OutboxMessage.id, OutboxMessage.context).where(OutboxMessage.id.in_(ids))
    ).tuples()
    scrubbed = [
        {"oid": oid, "ctx": kept}
        for oid, context in rows
        if (kept := without_links(context or {})) != context
    ]
    if scrubbed:
        table = cast(Table, OutboxMessage.__table__)
        session.execute(
            update(table).where(table.c.id == bindparam("oid")).values(context=bindparam("ctx")),
            scrubbed,
        )


def _audit_failures(session: Session, failed: Sequence[Outcome], limit: int) -> None:
    """A mail that will never arrive is an event someone must act on; deliveries and retries
    are bookkeeping the row itself keeps (state, attempts, sent_at, last_error)."""
    if not failed:
        return
    rows = {
        row.id: row
        for row in session.execute(
            select(
                OutboxMessage.id,
                OutboxMessage.cycle_id,
                OutboxMessage.recipient_email,
                OutboxMessage.template,
            ).where(OutboxMessage.id.in_([o.id for o in failed]))
        )
    }
    for outcome in failed:
        row = rows.get(outcome.id)
        audit.record(
            session,
            actor=audit.SYSTEM,
            action="outbox.failed",
            subject=f"outbox:{outcome.id}",
            cycle_id=row.cycle_id if row else None,
            before={"state": "sending", "attempts": outcome.attempts},
            after={
                "state": "failed",
                "attempts": outcome.attempts + 1,
                "recipient": row.recipient_email if row else None,
                "template": row.template if row else None,
                "error": _final_error(outcome, limit),
            },
        )


def _final_error(outcome: Outcome, limit: int) -> str:
    if outcome.status == "temporary":
        return _clip(f"gave up after {outcome.attempts + 1} attempts: {outcome.error}")
    return _clip(outcome.error)


def _clip(error: str | None) -> str:
    return (error or "unknown error")[:ERROR_MAX_CHARS]


# ---------------------------------------------------------------- one relay pass


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


def renew_claims(session: Session, ids: Sequence[int], worker_id: str, now: datetime) -> set[int]:
    """Refresh this relay's claims on `ids`; the ids it still holds (a claim that expired and
    went to another relay is not ours to send any more)."""
    if not ids:
        return set()
    held = session.scalars(
        update(OutboxMessage)
        .where(*_held_by(ids, worker_id))
        .values(claimed_at=now)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    )
    return set(held)


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


class RenderPool:
    """Render processes, started by the first batch big enough to repay their start-up."""

    def __init__(self, processes: int, min_rows: int = RENDER_POOL_MIN_ROWS):
        self.processes = processes
        self.min_rows = min_rows
        self._executor: Executor | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    def for_batch(self, rows: int) -> Executor | None:
        if self._executor is None and (self.processes <= 0 or rows < self.min_rows):
            return None
        if self._executor is None:
            self._executor = start_renderer(self.processes)
        return self._executor

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _held_by(ids: Sequence[int], worker_id: str) -> tuple[Any, ...]:
    """The rows among `ids` this worker still has claimed (and not yet recorded)."""
    return (
        OutboxMessage.id.in_(ids),
        OutboxMessage.state == "sending",
        OutboxMessage.claimed_by == worker_id,
    )


def unclaim(session: Session, ids: Sequence[int], worker_id: str) -> int:
    result = session.execute(
        update(OutboxMessage)
        .where(*_held_by(ids, worker_id))
        .values(state="pending", claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run, also when the caller already runs an event loop (an async flow, a notebook):
    then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
