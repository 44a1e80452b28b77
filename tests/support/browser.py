"""What the real-browser tests stand on: the portal served by uvicorn on loopback, an SMTP sink
the relay delivers the outbox to, links read from the mails it received, and Debian's chromium.

Nothing here is a stand-in: the browser talks HTTP to the same app `perfcycle up` serves, and a
link is only ever taken from an .eml file the sink wrote.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest
import uvicorn

from perfcycle.core.settings import Settings, get_settings
from perfcycle.notifications import relay
from perfcycle.notifications.mailsink import MailSink
from perfcycle.web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 800}
SERVER_START_S = 10.0
RELAY_PASSES = 20
_LINK = re.compile(r"https?://[^\s<>\"']+/t/[A-Za-z0-9_-]+")


def require_chromium() -> Path:
    """Debian's chromium; without it the browser tests skip, except in CI where they must run."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is required in CI (dev.py installs it with apt-get chromium)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


def output_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a test's screenshots go: $PERFCYCLE_TEST_OUTPUT/<test name>, else tmp_path."""
    root = os.environ.get("PERFCYCLE_TEST_OUTPUT")
    if not root:
        return tmp_path
    folder = Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------- the portal on loopback


@dataclass
class PortalServer:
    """uvicorn serving create_app(database_url) on a thread; `base_url` once started."""

    database_url: str
    base_url: str = ""
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> PortalServer:
        # Binding here, before uvicorn starts, means no other process can take the port between
        # choosing it and serving on it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_app(self.database_url), log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        self._wait_until_healthy()
        return self

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"portal at {self.base_url} did not answer /healthz in {SERVER_START_S}s"
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=SERVER_START_S)
        self._server = self._thread = None


@contextmanager
def serve_portal(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[PortalServer]:
    """The portal on a free port, and the settings pointing mail links at it."""
    server = PortalServer(database_url).start()
    monkeypatch.setenv("PERFCYCLE_PORTAL_BASE_URL", server.base_url)
    get_settings.cache_clear()
    try:
        yield server
    finally:
        server.stop()
        get_settings.cache_clear()


# ---------------------------------------------------------------- mail actually received


@dataclass(frozen=True)
class ReceivedMail:
    path: Path
    to: str
    template: str
    text: str
    html: str

    def link(self) -> str:
        """The portal link of the mail, from its plain-text part (the HTML part's must match)."""
        found = _LINK.findall(self.text)
        assert found, f"{self.path.name}: no portal link in the text part:\n{self.text}"
        assert found[-1] in self.html, f"{self.path.name}: the HTML part has another link"
        return found[-1]


class Inbox:
    """An aiosmtpd sink on a free port; `deliver` runs the relay until the outbox is empty."""

    def __init__(self, folder: Path) -> None:
        self.sink = MailSink(folder)

    def __enter__(self) -> Inbox:
        self.sink.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sink.stop()

    def deliver(self, database_url: str) -> int:
        """Send every due outbox row to the sink; returns how many were sent."""
        settings = Settings(smtp_host="127.0.0.1", smtp_port=self.sink.port)
        sent = 0
        # The relay runs its own event loop: on a thread of its own, never Playwright's.
        with ThreadPoolExecutor(max_workers=1) as pool:
            for _ in range(RELAY_PASSES):
                report = pool.submit(relay.relay_once, database_url, settings=settings).result()
                if report.handled == 0:
                    return sent
                sent += report.sent
        raise AssertionError(f"the outbox did not drain in {RELAY_PASSES} relay passes")

    def mails(self) -> list[ReceivedMail]:
        return [read_mail(path) for path in sorted(self.sink.directory.glob("*.eml"))]

    def mail_to(self, address: str, template: str) -> ReceivedMail:
        """The newest `template` mail the sink received for `address`."""
        found = [
            m for m in self.mails() if m.template == template and address.lower() in m.to.lower()
        ]
        assert found, f"no {template} mail to {address} among {len(self.mails())} received"
        return found[-1]


def read_mail(path: Path) -> ReceivedMail:
    message = BytesParser(policy=email_policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    return ReceivedMail(
        path=path,
        to=str(message.get("To", "")),
        template=str(message.get("X-Perfcycle-Template", "")),
        text=_part(message, "plain"),
        html=_part(message, "html"),
    )


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    return body.get_content() if isinstance(body, EmailMessage) else ""
