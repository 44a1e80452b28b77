"""An SMTP server the tests control (aiosmtpd on a loopback port) that records what the relay
delivers, and mails to give it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import compat32
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller

from perfcycle.core.settings import Settings
from perfcycle.notifications import outbox


def smtp_settings(port: int, **overrides: Any) -> Settings:
    """The relay pointed at a loopback server; no send-rate cap unless a test sets one."""
    return Settings(
        **{"smtp_host": "127.0.0.1", "smtp_port": port, "mail_rate_per_second": 0.0, **overrides}
    )


Rule = Callable[[str], str | None]


class Recorder:
    """aiosmtpd handler: keeps every accepted message; `rcpt` / `data` rules may answer with an
    error reply instead (given the recipient address; None accepts)."""

    def __init__(
        self,
        rcpt: Rule | None = None,
        data: Rule | None = None,
        without: frozenset[str] = frozenset(),
    ):
        self.rcpt = rcpt
        self.data = data
        self.without = without  # ESMTP extensions not to offer, e.g. {"8BITMIME"}
        self.messages: list[EmailMessage] = []
        self.envelopes: list[list[str]] = []
        self.peers: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    # aiosmtpd's hooks are called as (server, session, envelope, *the command's arguments).
    async def handle_EHLO(
        self, _server: Any, session: Any, _envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        offered = [r for r in responses if r[4:].split(" ")[0].upper() not in self.without]
        # The last line of a multi-line reply has a space after the code, the others a dash.
        return [r[:3] + "-" + r[4:] for r in offered[:-1]] + [
            offered[-1][:3] + " " + offered[-1][4:]
        ]

    async def handle_RCPT(
        self, _server: Any, _session: Any, envelope: Any, address: str, _options: Any
    ) -> str:
        reply = self.rcpt(address) if self.rcpt else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:
        reply = self.data(envelope.rcpt_tos[0]) if self.data else None
        if reply:
            return reply
        message = BytesParser(policy=default_policy).parsebytes(envelope.original_content)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
            self.envelopes.append(list(envelope.rcpt_tos))
            self.peers.add(tuple(session.peer))
        return "250 Message accepted"

    def ids(self) -> Counter[str]:
        # compat32 keeps the Message-ID exactly as sent.
        return Counter(
            str(BytesParser(policy=compat32).parsebytes(m.as_bytes())["Message-ID"])
            for m in self.messages
        )


class Server:
    def __init__(self, handler: Any, port: int, **options: Any):
        self.port = port
        self._controller = Controller(handler, hostname="127.0.0.1", port=port, **options)

    def __enter__(self) -> Server:
        self._controller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._controller.stop()


def goals_mail(n: int, email: str | None = None, **context: Any) -> outbox.Mail:
    return outbox.Mail(
        cycle_id=None,
        recipient_id=f"E{n:05d}",
        recipient_email=email or f"person{n}@example.com",
        locale="en" if n % 2 else "zh-CN",
        template="goals_to_agree",
        occurrence="target_setting:1",
        context={
            "cycle_id": 1,
            "period": "2026-Q4",
            "name": f"Person {n}",
            "due_at": "2027-01-20T10:00:00+00:00",
            "indicators": 5,
            **context,
        },
    )
