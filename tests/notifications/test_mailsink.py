"""The mail sink: real SMTP over loopback, messages kept as .eml files in arrival order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import format_datetime
from pathlib import Path

import aiosmtplib
import pytest

from perfcycle.notifications.mailsink import MailSink, list_messages, main, sanitize_message_id


def make_message(to: str, subject: str, message_id: str, when: datetime) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "perfcycle <perfcycle@localhost>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    msg.set_content("请填写评价表。\nPlease fill in the evaluation form.")
    msg.add_alternative(
        "<p>请填写<b>评价表</b>。</p><p>Please fill in the evaluation form.</p>", subtype="html"
    )
    return msg


def send(port: int, msg: EmailMessage) -> None:
    asyncio.run(aiosmtplib.send(msg, hostname="127.0.0.1", port=port, timeout=10))


def parse(path: Path) -> EmailMessage:
    msg = BytesParser(policy=default_policy).parsebytes(path.read_bytes())
    assert isinstance(msg, EmailMessage)
    return msg


def test_sink_stores_each_message_as_eml_with_its_parts(tmp_path: Path) -> None:
    when = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
    with MailSink(tmp_path / "mail") as sink:
        assert sink.port > 0
        send(
            sink.port,
            make_message(
                "王芳 <wang.fang@example.com>",
                "绩效评价：请在 11 月 10 日前完成",
                "<c7.E001.rate_request.1@perfcycle.local>",
                when,
            ),
        )

    files = sorted((tmp_path / "mail").iterdir())
    assert [f.name for f in files] == ["000001-c7.E001.rate_request.1@perfcycle.local.eml"]
    stored = parse(files[0])
    assert stored["Subject"] == "绩效评价：请在 11 月 10 日前完成"
    assert stored["To"].addresses[0].addr_spec == "wang.fang@example.com"
    assert b"Message-ID: <c7.E001.rate_request.1@perfcycle.local>\r\n" in files[0].read_bytes()
    plain = stored.get_body(("plain",))
    html = stored.get_body(("html",))
    assert plain is not None and "请填写评价表" in plain.get_content()
    assert html is not None and "<b>评价表</b>" in html.get_content()


def test_list_messages_in_arrival_order_and_numbering_continues(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    t1 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    t2 = datetime(2026, 11, 4, 9, 0, tzinfo=UTC)
    with MailSink(folder) as sink:
        send(sink.port, make_message("b@example.com", "second-id-first", "<zz@x>", t1))
        send(sink.port, make_message("a@example.com", "first-id-second", "<aa@x>", t2))
    # A restarted sink must not overwrite or reorder what is already there.
    with MailSink(folder) as sink:
        send(sink.port, make_message("c@example.com", "third", "<mm@x>", t2))

    messages = list_messages(folder)
    assert [(m.to, m.subject, m.date) for m in messages] == [
        ("b@example.com", "second-id-first", t1),
        ("a@example.com", "first-id-second", t2),
        ("c@example.com", "third", t2),
    ]
    assert [m.path.name[:7] for m in messages] == ["000001-", "000002-", "000003-"]
    assert sorted(p.name for p in folder.iterdir()) == [m.path.name for m in messages]


def test_list_messages_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert list_messages(tmp_path / "nothing") == []


def test_message_without_message_id_is_kept(tmp_path: Path) -> None:
    msg = make_message("d@example.com", "no id", "<x@y>", datetime(2026, 1, 1, tzinfo=UTC))
    del msg["Message-ID"]
    with MailSink(tmp_path) as sink:
        send(sink.port, msg)
    [only] = list_messages(tmp_path)
    assert only.path.name == "000001-no-message-id.eml"
    assert only.subject == "no id"


def test_second_sink_on_a_taken_port_fails_naming_it(tmp_path: Path) -> None:
    with (
        MailSink(tmp_path / "a") as first,
        pytest.raises(OSError, match=f"port {first.port} .*already in use"),
    ):
        MailSink(tmp_path / "b", port=first.port).start()


def test_cli_list_prints_stored_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MailSink(tmp_path) as sink:
        send(
            sink.port,
            make_message(
                "e@example.com", "目标设定", "<g@x>", datetime(2026, 11, 5, 8, 0, tzinfo=UTC)
            ),
        )
    assert main(["--list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2026-11-05 08:00:00Z  to e@example.com  目标设定" in out
    assert "1 message(s)" in out


def test_sanitized_message_id_is_file_name_safe() -> None:
    assert sanitize_message_id("<7:E001/../x y@perfcycle>") == "7_E001_.._x_y@perfcycle"
    assert sanitize_message_id(None) == "no-message-id"
    assert len(sanitize_message_id("<" + "a" * 300 + "@x>")) == 80
