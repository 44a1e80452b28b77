"""The mail relay against real SMTP servers on loopback (aiosmtpd): what people receive, and that
nothing is lost or sent twice when the server is down, says "later" (4xx) or "never" (5xx), or
when two relays run at once on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from html import escape
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from sqlalchemy import func, select

from perfcycle.cli.outbox import list_command, register, retry_command
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import get_settings
from perfcycle.devtools.devstack import pick_free_ports
from perfcycle.domain.models import AuditEvent, OutboxMessage
from perfcycle.notifications import links, outbox, relay
from perfcycle.notifications.mailsink import MailSink
from perfcycle.notifications.notify import links_in
from perfcycle.notifications.render import message_id, render, resolve_locale
from tests.support.cycle import launch, prepare_demo_org, run_until_wait
from tests.support.smtp import Recorder, Server, goals_mail, smtp_settings

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
CJK = range(0x4E00, 0xA000)


# ---------------------------------------------------------------- an SMTP server we control


@pytest.fixture
def port() -> int:
    return pick_free_ports(1)[0]


@pytest.fixture
def clock_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Freeze the clock (at T0 to start with); call to move it."""

    def move(moment: datetime) -> None:
        monkeypatch.setenv("PERFCYCLE_NOW", moment.isoformat())

    move(T0)
    return move


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# ---------------------------------------------------------------- helpers


def enqueue(url: str, mails: list[outbox.Mail]) -> None:
    with session_scope(url) as session:
        outbox.enqueue(session, mails)


def rows(url: str) -> list[OutboxMessage]:
    with session_scope(url) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def row(url: str, key: str) -> OutboxMessage:
    with session_scope(url) as session:
        found = session.scalar(select(OutboxMessage).where(OutboxMessage.idempotency_key == key))
    assert found is not None
    return found


def audit_count(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}", subtype
    # SMTP carries CRLF line ends; compare text as rendered.
    return str(part.get_content()).replace("\r\n", "\n")


def has_cjk(text: str) -> bool:
    return any(ord(ch) in CJK for ch in text)


def demo_cycle_at_first_stage(url: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    org = prepare_demo_org(url, folder)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    cycle_id = launch(url, "external-service", "2026-Q4")
    status = run_until_wait(url, cycle_id)
    assert status.next == "people", status
    return cycle_id


# ---------------------------------------------------------------- what people receive


@pytest.mark.usefixtures("clock_at")
def test_cycle_mail_arrives_rendered_in_the_recipients_language(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_cycle_at_first_stage(db_url, tmp_path, monkeypatch)
    queued = rows(db_url)
    assert len(queued) > 10 and {r.locale for r in queued} >= {"en", "zh-CN"}

    events = audit_count(db_url)
    with MailSink(tmp_path / "mail") as sink:
        report = relay.relay_until_idle(db_url, settings=smtp_settings(sink.port))

    assert (report.sent, report.retried, report.failed) == (len(queued), 0, 0)
    # Deliveries are the rows' own bookkeeping, not audit events.
    assert audit_count(db_url) == events
    received: dict[str, EmailMessage] = {}
    for path in sorted((tmp_path / "mail").glob("*.eml")):
        message = BytesParser(policy=default_policy).parsebytes(path.read_bytes())
        assert isinstance(message, EmailMessage)
        received[str(message["X-Perfcycle-Key"])] = message
    assert sorted(received) == sorted(r.idempotency_key for r in queued)
    mail_from = get_settings().mail_from
    for r in queued:
        message = received[r.idempotency_key]
        expected = render(r.template, r.locale, r.context)
        assert message["To"] == r.recipient_email
        assert message["Subject"] == expected.subject
        assert message["Message-ID"] == message_id(r.idempotency_key, mail_from)
        assert message.get_content_type() == "multipart/alternative"
        assert body(message, "plain") == expected.text
        assert body(message, "html") == expected.html
        assert message["Content-Language"] == resolve_locale(r.locale)
        # zh-CN readers get Chinese, en readers get none.
        assert has_cjk(expected.subject + expected.text) == (resolve_locale(r.locale) == "zh-CN")
        if "link" in r.context:
            assert r.context["link"] in body(message, "plain")
            assert escape(r.context["link"]) in body(message, "html")
    assert {r.state for r in rows(db_url)} == {"sent"}


@pytest.mark.usefixtures("clock_at")
def test_the_task_link_is_in_both_parts(db_url: str, port: int) -> None:
    link = "http://127.0.0.1:8700/t/9f2c?cycle=1&task=goals"
    enqueue(db_url, [goals_mail(1, link=link), goals_mail(2, link=link)])
    recorder = Recorder()
    with Server(recorder, port):
        relay.relay_until_idle(db_url, settings=smtp_settings(port))

    assert len(recorder.messages) == 2
    for message in recorder.messages:
        assert link in body(message, "plain")
        assert f'href="{escape(link)}"' in body(message, "html")


@pytest.mark.usefixtures("clock_at")
def test_a_delivered_row_keeps_no_link_and_the_mailed_link_still_works(
    db_url: str, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens are stored hashed; once mailed, the outbox must not keep them in clear either."""
    cycle_id = demo_cycle_at_first_stage(db_url, tmp_path, monkeypatch)
    queued = {m.id: links_in(m.context) for m in rows(db_url) if m.cycle_id == cycle_id}
    with_links = sorted(i for i, found in queued.items() if found)
    assert len(with_links) > 10
    gone = with_links[0]
    with session_scope(db_url) as session:
        refused_for = session.get_one(OutboxMessage, gone).recipient_email
    recorder = Recorder(rcpt=lambda a: "550 5.1.1 no such user" if a == refused_for else None)
    with Server(recorder, port):
        relay.relay_until_idle(db_url, settings=smtp_settings(port))

    after = {m.id: m for m in rows(db_url) if m.id in queued}
    for row_id, row_after in after.items():
        if row_id == gone:
            # Not delivered: HR may send it again, so its link stays.
            assert row_after.state == "failed" and links_in(row_after.context) == queued[gone]
        else:
            assert row_after.state == "sent" and links_in(row_after.context) == []
            assert row_after.context.get("link", None) is None
    assert len(recorder.messages) == len(queued) - 1
    opened = 0
    for message in recorder.messages:
        mailed = [u for u in body(message, "plain").split() if "/t/" in u]
        if not mailed:
            continue  # a notice to HR, with no task of its own
        with session_scope(db_url) as session:
            token = links.resolve(session, links.token_of(mailed[0]), T0)
            assert token is not None and token.used_at is None
        opened += 1
    assert opened == len(with_links) - 1


@pytest.mark.usefixtures("clock_at")
def test_one_smtp_session_carries_many_messages(db_url: str, port: int) -> None:
    enqueue(db_url, [goals_mail(n) for n in range(40)])
    recorder = Recorder()
    batches: list[int] = []
    with Server(recorder, port):
        report = relay.relay_until_idle(
            db_url, limit=20, throttle=batches.append, settings=smtp_settings(port)
        )

    assert report.sent == 40 and len(recorder.messages) == 40
    assert batches == [20, 20]  # the throttle is asked for every message before it is sent
    # At most smtp_max_connections (4) sessions per batch of 20, each sending several.
    assert len(recorder.peers) <= 8
    assert recorder.envelopes == [[str(m["To"])] for m in recorder.messages]

    enqueue(db_url, [goals_mail(n) for n in range(40, 50)])
    single = Recorder()
    with Server(single, port):
        relay.relay_until_idle(db_url, settings=smtp_settings(port, smtp_max_connections=1))
    assert len(single.messages) == 10 and len(single.peers) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_relay_logs_in_when_credentials_are_set(db_url: str, port: int, clock_at: Any) -> None:
    def authenticator(*args: Any) -> AuthResult:
        credentials = args[-1]
        ok = (credentials.login, credentials.password) == (b"relay", b"s3cret")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd replies 535

    enqueue(db_url, [goals_mail(1)])
    recorder = Recorder()
    options = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
    with Server(recorder, port, **options):
        wrong = smtp_settings(port, smtp_username="relay", smtp_password="wrong")
        refused = relay.relay_until_idle(db_url, settings=wrong)
        assert (refused.sent, refused.retried) == (0, 1)  # a configuration error: retried
        assert "535" in (rows(db_url)[0].last_error or "")
        clock_at(T0 + timedelta(minutes=5))
        right = smtp_settings(port, smtp_username="relay", smtp_password="s3cret")
        assert relay.relay_until_idle(db_url, settings=right).sent == 1
    assert [m["To"] for m in recorder.messages] == ["person1@example.com"]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, so the relay's normal certificate checks can pass."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("mode", ["starttls", "implicit_tls"])
def test_the_relay_speaks_tls_as_configured(
    db_url: str,
    port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clock_at: Any,
    mode: str,
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted like a real CA's certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if mode == "starttls":
        options: dict[str, Any] = {"tls_context": context, "require_starttls": True}
        settings = smtp_settings(port, smtp_starttls=True)
    else:
        options = {"ssl_context": context}
        settings = smtp_settings(port, smtp_tls=True)
    enqueue(db_url, [goals_mail(1)])
    recorder = Recorder()
    with Server(recorder, port, **options):
        plain = relay.relay_until_idle(db_url, settings=smtp_settings(port, smtp_timeout=3))
        assert (plain.sent, plain.retried) == (0, 1)  # the server insists on TLS
        expected = "530" if mode == "starttls" else "Timed out"
        assert expected in (rows(db_url)[0].last_error or "")
        clock_at(T0 + timedelta(minutes=5))
        assert relay.relay_until_idle(db_url, settings=settings).sent == 1
    assert [m["To"] for m in recorder.messages] == ["person1@example.com"]


@pytest.mark.usefixtures("clock_at")
def test_render_processes_deliver_the_same_mail(db_url: str, port: int) -> None:
    broken = goals_mail(99)
    del broken.context["indicators"]
    enqueue(db_url, [goals_mail(n) for n in range(30)] + [broken])
    recorder = Recorder()
    with Server(recorder, port), relay.RenderPool(1, min_rows=1) as renderers:
        report = relay.relay_once(db_url, settings=smtp_settings(port), renderers=renderers)
        assert renderers.started  # the batch was rendered in the other process

    assert (report.sent, report.failed) == (30, 1)
    assert set(recorder.ids().values()) == {1} and len(recorder.messages) == 30
    by_key = {r.idempotency_key: r for r in rows(db_url)}
    for message in recorder.messages:
        r = by_key[str(message["X-Perfcycle-Key"])]
        assert body(message, "plain") == render(r.template, r.locale, r.context).text
    assert (by_key[broken.idempotency_key].last_error or "").startswith("render error: Undefined")


# ---------------------------------------------------------------- failures


def test_smtp_down_during_a_stage_then_up_every_mail_arrives_once(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int, clock_at: Any
) -> None:
    cycle_id = demo_cycle_at_first_stage(db_url, tmp_path, monkeypatch)
    queued = rows(db_url)
    settings = smtp_settings(port)

    down = relay.relay_until_idle(db_url, settings=settings)  # nothing listens on `port`

    assert (down.sent, down.retried, down.failed) == (0, len(queued), 0)
    for r in rows(db_url):
        assert (r.state, r.attempts) == ("pending", 1)
        assert r.next_attempt_at is not None and r.next_attempt_at > T0
        assert f"connect to 127.0.0.1:{port}" in (r.last_error or "")
    # Backoff: nothing is due yet, so a relay a moment later sends nothing.
    clock_at(T0 + timedelta(seconds=10))
    assert relay.relay_until_idle(db_url, settings=settings).handled == 0

    recorder = Recorder()
    with Server(recorder, port):
        clock_at(T0 + timedelta(minutes=5))
        up = relay.relay_until_idle(db_url, settings=settings)
        # The stage runs again (a resumed flow): it adds nothing, and nothing goes out twice.
        assert run_until_wait(db_url, cycle_id).next == "people"
        again = relay.relay_until_idle(db_url, settings=settings)

    assert up.sent == len(queued) and again.handled == 0
    ids = recorder.ids()
    assert len(ids) == len(queued) and set(ids.values()) == {1}
    assert sorted(m["X-Perfcycle-Key"] for m in recorder.messages) == sorted(
        r.idempotency_key for r in queued
    )
    assert {(r.state, r.attempts) for r in rows(db_url)} == {("sent", 2)}


def test_a_4xx_is_retried_with_backoff_then_delivered(
    db_url: str, port: int, clock_at: Any
) -> None:
    busy = {"person1@example.com"}
    greylisting = {"person2@example.com"}

    def later_the_first_time(address: str) -> str | None:
        if address not in busy:
            return None
        busy.discard(address)
        return "451 4.3.0 Try again later"

    def greylisted(address: str) -> str | None:
        return "450 4.7.1 Greylisted, come back later" if address in greylisting else None

    enqueue(db_url, [goals_mail(1), goals_mail(2)])
    recorder = Recorder(rcpt=greylisted, data=later_the_first_time)
    with Server(recorder, port):
        first = relay.relay_once(db_url, settings=smtp_settings(port))
        assert (first.sent, first.retried, first.failed) == (0, 2, 0)
        one, two = rows(db_url)
        assert one.last_error == "451 4.3.0 Try again later"
        assert two.last_error == "450 4.7.1 Greylisted, come back later"
        for r in (one, two):
            assert r.state == "pending" and r.attempts == 1
            assert r.next_attempt_at is not None
            assert T0 + timedelta(seconds=24) <= r.next_attempt_at <= T0 + timedelta(seconds=36)
        assert relay.relay_once(db_url, settings=smtp_settings(port)).handled == 0

        greylisting.clear()
        clock_at(T0 + timedelta(minutes=1))
        second = relay.relay_once(db_url, settings=smtp_settings(port))

    assert second.sent == 2
    assert sorted(m["To"] for m in recorder.messages) == [
        "person1@example.com",
        "person2@example.com",
    ]
    assert {(r.state, r.attempts, r.last_error) for r in rows(db_url)} == {("sent", 2, None)}


def test_a_5xx_fails_with_the_reply_shows_in_the_list_and_retry_requeues(
    db_url: str, port: int, clock_at: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = "550 5.1.1 <gone@example.com>: Recipient address rejected: mailbox unavailable"
    gone = {"gone@example.com"}
    enqueue(db_url, [goals_mail(1), goals_mail(2, email="gone@example.com"), goals_mail(3)])
    recorder = Recorder(rcpt=lambda a: reply if a in gone else None)
    with Server(recorder, port):
        report = relay.relay_until_idle(db_url, settings=smtp_settings(port))
    failed = row(db_url, goals_mail(2).idempotency_key)
    assert (report.sent, report.retried, report.failed) == (2, 0, 1)
    assert (failed.state, failed.attempts, failed.last_error) == ("failed", 1, reply)
    with session_scope(db_url) as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "outbox.failed"))
        assert event is not None and event.subject == f"outbox:{failed.id}"
        assert event.after is not None and event.after["error"] == reply
    # Final: hours later it is still not retried.
    clock_at(T0 + timedelta(hours=5))
    with Server(Recorder(), port):
        assert relay.relay_until_idle(db_url, settings=smtp_settings(port)).handled == 0

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    capsys.readouterr()
    args = parser.parse_args(["outbox", "list", "--failed", "--json"])
    assert args.func(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["id"], m["recipient"], m["state"], m["last_error"]) for m in listed] == [
        (failed.id, "gone@example.com", "failed", reply)
    ]
    assert list_command(failed_only=True, as_json=False) == 0
    table = capsys.readouterr().out
    assert f"{failed.id}" in table and "gone@example.com" in table and "550 5.1.1" in table

    # All-or-nothing: one id that is not failed, and nothing is re-queued.
    sent_id = row(db_url, goals_mail(1).idempotency_key).id
    with pytest.raises(InvalidInput, match=f"outbox message {sent_id} is sent"):
        retry_command([failed.id, sent_id])
    with pytest.raises(InvalidInput, match="no outbox message with id 999"):
        retry_command([999])
    assert row(db_url, failed.idempotency_key).state == "failed"

    args = parser.parse_args(["outbox", "retry", str(failed.id)])
    assert args.func(args) == 0
    requeued = row(db_url, failed.idempotency_key)
    assert (requeued.state, requeued.attempts, requeued.last_error) == ("pending", 0, None)
    with session_scope(db_url) as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "outbox.retried"))
        assert event is not None and event.subject == f"outbox:{failed.id}"
        assert event.before is not None and event.before["last_error"] == reply

    gone.clear()  # the mailbox was restored
    recorder = Recorder()
    with Server(recorder, port):
        assert relay.relay_until_idle(db_url, settings=smtp_settings(port)).sent == 1
    assert [m["To"] for m in recorder.messages] == ["gone@example.com"]


def test_template_errors_and_bad_addresses_fail_at_once_and_send_nothing(
    db_url: str, port: int, clock_at: Any
) -> None:
    missing_variable = goals_mail(1)
    del missing_variable.context["indicators"]
    unknown = outbox.Mail(None, "E9", "e9@example.com", "en", "no_such_template", "x", {})
    bad_address = goals_mail(3, email="not an address")
    enqueue(db_url, [missing_variable, unknown, bad_address, goals_mail(4)])
    recorder = Recorder()
    with Server(recorder, port):
        report = relay.relay_until_idle(db_url, settings=smtp_settings(port))
        clock_at(T0 + timedelta(days=1))
        assert relay.relay_until_idle(db_url, settings=smtp_settings(port)).handled == 0

    assert (report.sent, report.failed) == (1, 3)
    assert [m["To"] for m in recorder.messages] == ["person4@example.com"]
    errors = {r.template + ":" + r.recipient_email: r.last_error or "" for r in rows(db_url)}
    assert errors["goals_to_agree:person1@example.com"].startswith("render error: UndefinedError")
    assert "indicators" in errors["goals_to_agree:person1@example.com"]
    assert errors["no_such_template:e9@example.com"].startswith("render error: TemplateNotFound")
    assert errors["goals_to_agree:not an address"] == "invalid address 'not an address'"


def test_broken_mail_settings_keep_the_mail_waiting_until_they_are_fixed(
    db_url: str, port: int, tmp_path: Path, clock_at: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template folder not mounted yet, or a time zone mistyped, is nobody's message's fault."""
    enqueue(db_url, [goals_mail(1), goals_mail(2)])
    recorder = Recorder()
    with Server(recorder, port):
        for hour, (variable, value) in enumerate(
            [
                ("PERFCYCLE_MAIL_TEMPLATES_DIR", str(tmp_path / "not-mounted-yet")),
                ("PERFCYCLE_MAIL_TIMEZONE", "Asia/Shangai"),
            ]
        ):
            clock_at(T0 + timedelta(hours=hour))
            with monkeypatch.context() as env:
                env.setenv(variable, value)
                get_settings.cache_clear()
                report = relay.relay_until_idle(db_url, settings=smtp_settings(port))
            get_settings.cache_clear()
            assert (report.retried, report.failed) == (2, 0), variable
            assert {m.state for m in rows(db_url)} == {"pending"}
            assert all((m.last_error or "").startswith("mail settings:") for m in rows(db_url))
        clock_at(T0 + timedelta(hours=3))
        assert relay.relay_until_idle(db_url, settings=smtp_settings(port)).sent == 2
    assert len(recorder.messages) == 2


def test_gives_up_after_the_maximum_attempts(db_url: str, port: int, clock_at: Any) -> None:
    enqueue(db_url, [goals_mail(1)])
    settings = smtp_settings(port, mail_max_attempts=3)
    # The server answers every time, and every time says "later".
    with Server(Recorder(data=lambda _a: "451 4.3.0 mailbox busy"), port):
        for hour in range(3):
            clock_at(T0 + timedelta(hours=hour))
            relay.relay_until_idle(db_url, settings=settings)
    final = rows(db_url)[0]
    assert (final.state, final.attempts) == ("failed", 3)
    assert (final.last_error or "").startswith("gave up after 3 attempts: 451 4.3.0")


def test_an_smtp_outage_of_days_fails_nothing_and_every_mail_arrives_once_after(
    db_url: str, port: int, clock_at: Any
) -> None:
    enqueue(db_url, [goals_mail(n) for n in range(5)])
    settings = smtp_settings(port, mail_max_attempts=3)
    for hour in range(0, 72, 2):  # nobody listens for three days, the relay keeps trying
        clock_at(T0 + timedelta(hours=hour))
        relay.relay_until_idle(db_url, settings=settings)
    waiting = rows(db_url)
    assert {m.state for m in waiting} == {"pending"}
    assert all(m.attempts > 3 and "connect to" in (m.last_error or "") for m in waiting)
    # Backoff grew to its cap, so the next try is at most an hour (plus jitter) away.
    assert all(
        m.next_attempt_at is not None
        and m.next_attempt_at <= T0 + timedelta(hours=70, minutes=72)
        for m in waiting
    )
    recorder = Recorder()
    clock_at(T0 + timedelta(hours=72))
    with Server(recorder, port):
        assert relay.relay_until_idle(db_url, settings=settings).sent == 5
    assert sorted(recorder.ids().values()) == [1] * 5


def test_a_relay_slowed_by_the_rate_limit_never_sends_what_another_took_over(
    db_url: str, port: int, clock_at: Any
) -> None:
    """Relay A waits so long for the rate limit that its claims expire; relay B takes the rows
    over and sends them. A must then send none of them."""
    enqueue(db_url, [goals_mail(n) for n in range(5)])
    settings = smtp_settings(port, mail_rate_per_second=1.0)
    recorder = Recorder()
    took_over: list[relay.RelayReport] = []

    def slow_throttle(_messages: int) -> None:
        if not took_over:
            clock_at(T0 + relay.STALE_CLAIM + timedelta(minutes=5))
            took_over.append(relay.relay_once(db_url, "relay-b", settings=settings))

    with Server(recorder, port):
        report = relay.relay_once(db_url, "relay-a", throttle=slow_throttle, settings=settings)
    assert took_over[0].sent == 5 and report.handled == 0
    assert sorted(recorder.ids().values()) == [1] * 5
    assert {m.state for m in rows(db_url)} == {"sent"}


@pytest.mark.usefixtures("clock_at")
def test_a_relay_stopped_mid_batch_records_what_it_sent_and_hands_back_the_rest(
    db_url: str, port: int
) -> None:
    enqueue(db_url, [goals_mail(n) for n in range(3)])
    # 0.1 messages a second: one message per chunk, the rate limit waited for before each.
    settings = smtp_settings(port, mail_rate_per_second=0.1)
    waits: list[int] = []

    def stopped_on_the_second_wait(messages: int) -> None:
        waits.append(messages)
        if len(waits) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or Prefect cancelling the flow run

    recorder = Recorder()
    with Server(recorder, port):
        with pytest.raises(KeyboardInterrupt):
            relay.relay_once(db_url, "relay-a", throttle=stopped_on_the_second_wait,
                             settings=settings)
        states = [m.state for m in rows(db_url)]
        assert states == ["sent", "pending", "pending"]  # at once, no claim left to expire
        assert relay.relay_until_idle(db_url, settings=settings).sent == 2
    assert len(recorder.messages) == 3
    assert sorted(recorder.ids().values()) == [1] * 3


def test_a_dead_relays_claim_expires_and_the_mail_is_sent_once(
    db_url: str, port: int, clock_at: Any
) -> None:
    enqueue(db_url, [goals_mail(1), goals_mail(2)])
    with session_scope(db_url) as session:
        claimed = relay.claim_batch(session, "dead-relay", 1, T0)
    assert [r.recipient_email for r in claimed] == ["person1@example.com"]

    recorder = Recorder()
    with Server(recorder, port):
        clock_at(T0 + timedelta(minutes=5))
        assert relay.relay_until_idle(db_url, settings=smtp_settings(port)).sent == 1
        assert [m["To"] for m in recorder.messages] == ["person2@example.com"]
        clock_at(T0 + relay.STALE_CLAIM + timedelta(minutes=1))
        assert relay.relay_until_idle(db_url, settings=smtp_settings(port)).sent == 1

    assert sorted(m["To"] for m in recorder.messages) == [
        "person1@example.com",
        "person2@example.com",
    ]
    assert {r.state for r in rows(db_url)} == {"sent"}


@pytest.mark.usefixtures("clock_at")
def test_a_server_without_8bitmime_gets_7bit_mail_and_no_smtputf8_means_final(
    db_url: str, port: int
) -> None:
    enqueue(db_url, [goals_mail(2), goals_mail(4, email="张伟@例子.中国")])  # zh-CN text
    recorder = Recorder(without=frozenset({"8BITMIME", "SMTPUTF8"}))
    with Server(recorder, port):
        report = relay.relay_until_idle(db_url, settings=smtp_settings(port))

    assert (report.sent, report.failed) == (1, 1)
    [message] = recorder.messages
    assert message.as_bytes().isascii()  # a server without 8BITMIME gets 7-bit clean mail
    mail = goals_mail(2)
    assert body(message, "plain") == render(mail.template, mail.locale, mail.context).text
    utf8_row = row(db_url, goals_mail(4).idempotency_key)
    assert utf8_row.state == "failed" and "SMTPUTF8" in (utf8_row.last_error or "")


def test_backoff_doubles_from_30_seconds_up_to_an_hour() -> None:
    import random

    rng = random.Random(7)
    for attempts, base in [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (30, 3600)]:
        delay = relay.backoff(attempts, rng).total_seconds()
        assert base * 0.8 <= delay <= base * 1.2, (attempts, delay)


# ---------------------------------------------------------------- two relays at once


def two_relays_send_each_row_once(url: str, port: int) -> None:
    total = 160
    enqueue(url, [goals_mail(n) for n in range(total)])
    recorder = Recorder()
    errors: list[BaseException] = []

    def run(worker: str) -> None:
        try:
            relay.relay_until_idle(url, worker, limit=8, settings=smtp_settings(port))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with Server(recorder, port):
        threads = [threading.Thread(target=run, args=(w,)) for w in ("relay-a", "relay-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

    assert not errors, errors
    ids = recorder.ids()
    assert len(ids) == total and set(ids.values()) == {1}
    final = rows(url)
    assert {r.state for r in final} == {"sent"}
    # Both relays really took part: the claim, not luck, kept them apart.
    by_worker = Counter(r.claimed_by for r in final)
    assert set(by_worker) == {"relay-a", "relay-b"}, by_worker


@pytest.mark.usefixtures("clock_at")
def test_two_relays_at_once_on_sqlite_send_each_row_once(db_url: str, port: int) -> None:
    two_relays_send_each_row_once(db_url, port)


@pytest.mark.postgres
@pytest.mark.usefixtures("clock_at")
def test_two_relays_at_once_on_postgresql_send_each_row_once(pg_url: str, port: int) -> None:
    two_relays_send_each_row_once(pg_url, port)


@pytest.mark.postgres
@pytest.mark.usefixtures("clock_at")
def test_claims_skip_rows_another_transaction_holds_on_postgresql(pg_url: str) -> None:
    enqueue(pg_url, [goals_mail(n) for n in range(6)])
    with session_scope(pg_url) as first:
        held = relay.claim_batch(first, "relay-a", 3, T0)
        # Not committed yet: the second relay neither waits nor takes the same rows.
        with session_scope(pg_url) as second:
            other = relay.claim_batch(second, "relay-b", 10, T0)
    assert [r.id for r in held] == [r.id for r in rows(pg_url)[:3]]
    assert [r.id for r in other] == [r.id for r in rows(pg_url)[3:]]
    assert Counter(r.claimed_by for r in rows(pg_url)) == {"relay-a": 3, "relay-b": 3}
