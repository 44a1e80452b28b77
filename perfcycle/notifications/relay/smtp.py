"""Sending: render claimed rows into wire-ready messages and deliver them over SMTP sessions.

Never raises for a delivery error: every row comes back as an Outcome (relay.outcomes records
them). RFC 5321 decides what is temporary (4yz, disconnects) and what is final (5yz).
"""

from __future__ import annotations

import asyncio
import email.policy
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool as BrokenExecutor
from dataclasses import dataclass
from email.parser import BytesParser
from email.utils import parseaddr

import aiosmtplib
from aiosmtplib.email import flatten_message

from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import Settings
from perfcycle.notifications.addresses import valid_address
from perfcycle.notifications.relay.claims import Claimed, OutboxRow
from perfcycle.notifications.relay.outcomes import Outcome, Status
from perfcycle.notifications.render import build_message, render

RENDER_CHUNK = 20
# RFC 4954: the server wants a login (or TLS first) whatever the message; our configuration.
AUTHENTICATION_REQUIRED = 530
@dataclass(frozen=True)
class _Ready:
    """A rendered message as it goes on the wire (picklable: made in a render process)."""

    row: Claimed
    data: bytes
    utf8: bool


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
