"""A local SMTP server that keeps every message it receives as an .eml file, for development.

With no real SMTP server configured, the dev stack points mail_relay here, so the quickstart
shows real messages. Files are named `000001-<message-id>.eml`: sorting by name is arrival order.

    perfcycle mail-sink [--host 127.0.0.1] [--port 8025] [--dir .perfcycle/mail] [--list]
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import compat32
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from aiosmtpd.controller import Controller

SUFFIX = ".eml"
_NUMBERED = re.compile(r"^(\d+)-")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


@dataclass(frozen=True)
class MessageSummary:
    path: Path
    to: str
    subject: str
    date: datetime


def list_messages(directory: Path) -> list[MessageSummary]:
    """The stored messages in arrival order; an absent folder holds none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [summarize(path) for path in sorted(directory.glob(f"*{SUFFIX}"))]


def summarize(path: Path) -> MessageSummary:
    headers = _parse_headers(path.read_bytes())
    return MessageSummary(
        path=path,
        to=str(headers.get("To", "")),
        subject=str(headers.get("Subject", "")),
        date=_header_date(headers) or _mtime(path),
    )


def _parse_headers(data: bytes) -> EmailMessage:
    message = BytesParser(policy=default_policy).parsebytes(data, headersonly=True)
    assert isinstance(message, EmailMessage)
    return message


def _header_date(headers: EmailMessage) -> datetime | None:
    raw = headers.get("Date")
    if raw is None:
        return None
    try:
        parsed = parsedate_to_datetime(str(raw))
    except (TypeError, ValueError):
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def sanitize_message_id(message_id: str | None) -> str:
    """A file-name-safe form of the Message-ID, so a file can be matched to the outbox row."""
    cleaned = _UNSAFE.sub("_", (message_id or "").strip().strip("<>")).strip("._")
    return cleaned[:80] or "no-message-id"


def _last_number(directory: Path) -> int:
    numbers = [
        int(match.group(1))
        for path in directory.glob(f"*{SUFFIX}")
        if (match := _NUMBERED.match(path.name))
    ]
    return max(numbers, default=0)


class _Store:
    """Writes messages to the folder; the counter continues after the files already there."""

    def __init__(self, directory: Path, on_message: Callable[[MessageSummary], None] | None):
        self.directory = directory
        self.on_message = on_message
        self._lock = threading.Lock()
        self._counter = _last_number(directory)

    def save(self, data: bytes) -> Path:
        # compat32 keeps the raw header: the default policy truncates ids it finds invalid.
        message_id = BytesParser(policy=compat32).parsebytes(data, headersonly=True)["Message-ID"]
        with self._lock:
            self._counter += 1
            name = f"{self._counter:06d}-{sanitize_message_id(message_id)}{SUFFIX}"
        final = self.directory / name
        # Written aside and renamed, so a reader never sees half a message.
        partial = self.directory / f".{name}.partial"
        partial.write_bytes(data)
        os.replace(partial, final)
        if self.on_message is not None:
            self.on_message(summarize(final))
        return final

    # aiosmtpd's hook, called as (server, session, envelope): only the envelope is needed here.
    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        self.save(data if isinstance(data, bytes) else str(data).encode())
        return "250 Message accepted for delivery"


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # Port 0 asks the OS for a free port: learn which before connecting to it.
        sockets = getattr(self.server, "sockets", None)
        if self.port == 0 and sockets:
            self.port = int(sockets[0].getsockname()[1])
        super()._trigger_server()


class MailSink:
    """An SMTP server on a background thread; use as a context manager.

    `port=0` picks a free port; `.port` is the one actually bound once started.
    """

    def __init__(
        self,
        directory: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        on_message: Callable[[MessageSummary], None] | None = None,
    ):
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.on_message = on_message
        self._controller: _Controller | None = None

    def start(self) -> MailSink:
        self.directory.mkdir(parents=True, exist_ok=True)
        store = _Store(self.directory, self.on_message)
        # aiosmtpd only reports a bind failure after its ready timeout: probe first, fail fast.
        self._check_port_free()
        controller = _Controller(store, hostname=self.host, port=self.port)
        try:
            controller.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise self._port_in_use() from exc
            raise
        self._controller = controller
        self.port = controller.port
        return self

    def _check_port_free(self) -> None:
        if self.port == 0:
            return
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise self._port_in_use() from exc
                raise

    def _port_in_use(self) -> OSError:
        return OSError(
            errno.EADDRINUSE, f"mail sink: port {self.port} on {self.host} is already in use"
        )

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------- command line


def format_summary(summary: MessageSummary) -> str:
    when = summary.date.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}Z  to {summary.to}  {summary.subject}  [{summary.path.name}]"


def _default_dir() -> Path:
    from perfcycle.core.settings import Settings

    return Settings().home / "mail"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfcycle mail-sink",
        description="Run a local SMTP server that stores each message as an .eml file.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--dir", type=Path, default=None, help="default: $PERFCYCLE_HOME/mail")
    parser.add_argument("--list", action="store_true", help="print the stored messages and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    directory: Path = args.dir or _default_dir()
    if args.list:
        messages = list_messages(directory)
        for summary in messages:
            print(format_summary(summary))
        print(f"{len(messages)} message(s) in {directory}")
        return 0
    return _serve(directory, args.host, args.port)


def _serve(directory: Path, host: str, port: int) -> int:
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        with MailSink(directory, host, port, on_message=_print_arrival) as sink:
            print(f"mail sink listening on {host}:{sink.port}, storing in {directory}", flush=True)
            while not stop.wait(0.5):
                pass
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _print_arrival(summary: MessageSummary) -> None:
    print(format_summary(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
