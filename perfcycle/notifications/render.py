"""Mail rendering: (template, locale, context) -> subject, plain text and HTML; then a MIME message.

Rendering is pure (no database, no SMTP; it reads only settings: HR's address, the display time
zone, the override folder), so it is tested without a server. Templates live in
`templates/<locale>/<name>.subject.j2`, `.txt.j2` and `.html.j2`, sharing the layouts
`templates/_layout.html.j2` and `_layout.txt.j2`. An organisation overrides any of them by
dropping a file with the same relative path into the folder PERFCYCLE_MAIL_TEMPLATES_DIR names.
Variables are StrictUndefined: a template that uses a key the code does not pass fails the test
suite, never a user's inbox.
"""

from __future__ import annotations

import email.policy
import hashlib
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    UndefinedError,
    pass_context,
)
from jinja2.runtime import Context

from perfcycle.core import clock
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.core.settings import get_settings
from perfcycle.notifications import vocabulary

PACKAGED_DIR = Path(__file__).resolve().parent / "templates"
LOCALES = ("zh-CN", "en")
DEFAULT_LOCALE = "zh-CN"
# Deadlines are stored in UTC; people read them in their office's time.
DEFAULT_TIMEZONE = "Asia/Shanghai"
_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


class MailRow(Protocol):
    """What build_message needs of an outbox row (OutboxMessage fits)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def recipient_email(self) -> str: ...
    @property
    def locale(self) -> str: ...
    @property
    def template(self) -> str: ...


# ---------------------------------------------------------------- rendering


def render(template: str, locale: str, context: Mapping[str, Any]) -> Rendered:
    """Render one mail. Raises jinja2.TemplateNotFound for an unknown template and
    jinja2.UndefinedError when the template needs a key the context lacks."""
    if not _TEMPLATE_NAME.match(template):
        raise TemplateNotFound(f"{template!r} (template names are lowercase words with _)")
    env = environment(override_dir())
    loc = _locale_with_template(env, template, resolve_locale(locale))
    settings = get_settings()
    variables = {
        **context,
        "locale": loc,
        "ui": UI[loc],
        "hr_email": settings.hr_email,
    }
    subject = _one_line(_render_part(env, f"{loc}/{template}.subject.j2", variables))
    variables["subject"] = subject
    text = _tidy_text(_render_part(env, f"{loc}/{template}.txt.j2", variables))
    html = _render_part(env, f"{loc}/{template}.html.j2", variables).strip() + "\n"
    return Rendered(subject=subject, text=text, html=html)


def _render_part(env: Environment, name: str, variables: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(variables)
    except UndefinedError as exc:
        # Jinja says only "'x' is undefined"; the relay stores this message on the failed row,
        # so it must say which file and line to fix.
        raise UndefinedError(f"{_template_line(exc) or name}: {exc.message}") from exc


def _template_line(exc: BaseException) -> str | None:
    """'path/to/name.html.j2:12' of the innermost template frame (Jinja rewrites tracebacks)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def resolve_locale(locale: str | None) -> str:
    """'en', 'en-GB', 'en_US' -> 'en'; 'zh', 'zh-CN', 'zh_Hans' and anything unknown -> 'zh-CN'."""
    tag = (locale or "").replace("_", "-").strip().lower()
    for known in LOCALES:
        if tag == known.lower() or tag.split("-")[0] == known.split("-")[0].lower():
            return known
    return DEFAULT_LOCALE


def _locale_with_template(env: Environment, template: str, locale: str) -> str:
    """A template an organisation added in one language only still reaches everyone."""
    try:
        env.get_template(f"{locale}/{template}.subject.j2")
        return locale
    except TemplateNotFound:
        if locale == DEFAULT_LOCALE:
            raise
        env.get_template(f"{DEFAULT_LOCALE}/{template}.subject.j2")
        return DEFAULT_LOCALE


def _one_line(subject: str) -> str:
    return " ".join(subject.split())


def _tidy_text(text: str) -> str:
    # "-- " (with its space) is the signature separator mail clients recognise: keep it.
    lines = [line if line == "-- " else line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def override_dir() -> Path | None:
    """The organisation's template folder, if configured (it is searched before ours).

    A configured folder that is missing is an error, not a silent fall-back to our templates:
    an organisation that overrides a footer for legal reasons must not send ours unnoticed.
    """
    value = str(get_settings().mail_templates_dir or "").strip()
    if not value:
        return None
    folder = Path(value)
    if not folder.is_dir():
        raise InvalidInput(
            [
                Problem(
                    f"mail template folder {folder} does not exist or is not a folder",
                    file=str(folder),
                    field="PERFCYCLE_MAIL_TEMPLATES_DIR",
                )
            ]
        )
    return folder


@lru_cache(maxsize=8)
def environment(override: Path | None) -> Environment:
    """One environment per override folder: compiled templates are reused across mails."""
    loaders: list[BaseLoader] = [FileSystemLoader(PACKAGED_DIR)]
    if override is not None:
        loaders.insert(0, FileSystemLoader(override))
    env = Environment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.do"],
        autoescape=_is_html,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals["cycle_label"] = cycle_label
    return env


def _is_html(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


# ---------------------------------------------------------------- MIME


def build_message(row: MailRow, rendered: Rendered, mail_from: str) -> EmailMessage:
    """multipart/alternative (text, then HTML) in UTF-8, with a Message-ID stable per outbox key."""
    msg = EmailMessage(policy=_POLICY)
    msg["Subject"] = rendered.subject
    msg["From"] = mail_from
    msg["To"] = row.recipient_email
    msg["Date"] = format_datetime(clock.now())
    msg["Message-ID"] = message_id(row.idempotency_key, mail_from)
    # Tell vacation responders and mail filters that no human wrote this.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Perfcycle-Key"] = row.idempotency_key
    msg["X-Perfcycle-Template"] = row.template
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    # After the parts: set_content drops every Content-* header set before it.
    msg["Content-Language"] = resolve_locale(row.locale)
    return msg


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard registry builds a new class for every header it parses, which made a message
    cost ~7 ms; the classes depend only on the header's name, so build each once."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


_POLICY = email.policy.default.clone(header_factory=_CachedHeaderRegistry())


def message_id(idempotency_key: str, mail_from: str) -> str:
    """The key has ':' and free text, which Message-ID syntax forbids: hash it. Same key, same id,
    so a message re-sent after a lost SMTP reply is recognisable as a duplicate."""
    # 128 bits: unique enough, and short enough that the header is not folded onto a new line.
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    address = parseaddr(mail_from)[1]
    domain = address.rpartition("@")[2] or "perfcycle.invalid"
    return f"<{digest}@{domain}>"


# ---------------------------------------------------------------- words and filters

# The mails' frame (greeting, footer, button) per locale, for the layouts.
UI: dict[str, dict[str, str]] = {
    locale: {key: words.get(locale) for key, words in vocabulary.MAIL_FRAME.items()}
    for locale in LOCALES
}

_MONTHS_EN = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

_ZH_QUARTERS = "一二三四"


def _locale(ctx: Context) -> str:
    return str(ctx.get("locale", DEFAULT_LOCALE))


def display_zone() -> ZoneInfo:
    return _zone(get_settings().mail_timezone or DEFAULT_TIMEZONE)


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(
            [
                Problem(
                    f"{name!r} is not a time zone; use an IANA name such as Asia/Shanghai",
                    field="PERFCYCLE_MAIL_TIMEZONE",
                )
            ]
        ) from exc


def to_moment(value: Any) -> datetime | date:
    """ISO string, date or datetime -> a date, or a datetime in the display time zone."""
    if isinstance(value, str):
        text = value.strip()
        value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(display_zone())
    if isinstance(value, date):
        return value
    raise TypeError(f"expected an ISO date or datetime, got {value!r}")


def format_date(value: Any, locale: str) -> str:
    """'2026年12月9日' / '9 Dec 2026'."""
    d = to_moment(value)
    if locale == "zh-CN":
        return f"{d.year}年{d.month}月{d.day}日"
    return f"{d.day} {_MONTHS_EN[d.month - 1]} {d.year}"


def format_day(value: Any, locale: str) -> str:
    """Short form for subject lines: '12月9日' / '9 Dec'."""
    d = to_moment(value)
    if locale == "zh-CN":
        return f"{d.month}月{d.day}日"
    return f"{d.day} {_MONTHS_EN[d.month - 1]}"


def format_when(value: Any, locale: str) -> str:
    """A deadline with its time and UTC offset, so nobody has to guess the time zone."""
    moment = to_moment(value)
    day = format_date(moment, locale)
    if not isinstance(moment, datetime):
        return day
    offset = moment.strftime("%z")
    zone = f"UTC{offset[:3]}:{offset[3:]}" if offset not in ("", "+0000") else "UTC"
    if locale == "zh-CN":
        return f"{day} {moment:%H:%M}（{zone}）"
    return f"{day}, {moment:%H:%M} ({zone})"


def format_period(period: Any, locale: str) -> str:
    """'2026-Q4' -> '2026年第四季度' / 'Q4 2026'; months, halves and years likewise."""
    text = str(period)
    m = re.fullmatch(r"(\d{4})(?:-(Q[1-4]|H[12]|\d{2}))?", text.strip())
    if not m:
        return text
    year, part = m.group(1), m.group(2)
    zh = locale == "zh-CN"
    if part is None:
        return f"{year}年度" if zh else year
    if part.startswith("Q"):
        return f"{year}年第{_ZH_QUARTERS[int(part[1]) - 1]}季度" if zh else f"{part} {year}"
    if part.startswith("H"):
        return f"{year}年{'上' if part == 'H1' else '下'}半年" if zh else f"{part} {year}"
    month = int(part)
    if not 1 <= month <= 12:
        return text
    return f"{year}年{month}月" if zh else f"{_MONTHS_EN[month - 1]} {year}"


def stage_title(name: Any, locale: str) -> str:
    return vocabulary.stage_title(str(name), locale)


@pass_context
def cycle_label(ctx: Context) -> str:
    """How a mail names its cycle: by its period (what people say), else its title or number."""
    zh = _locale(ctx) == "zh-CN"
    title, period, cycle_id = (ctx.get(k) for k in ("cycle_title", "period", "cycle_id"))
    if period:
        label = format_period(period, _locale(ctx))
        return f"{label}绩效考核" if zh else f"{label} performance review"
    if title:
        return str(title)
    if cycle_id is not None:
        return f"第 {cycle_id} 期绩效考核" if zh else f"review cycle {cycle_id}"
    return "本次绩效考核" if zh else "this performance review"


def _lookup(table: Mapping[str, vocabulary.Words]) -> Callable[[Context, Any], str]:
    @pass_context
    def translate(ctx: Context, value: Any) -> str:
        words = table.get(str(value))
        return words.get(_locale(ctx)) if words else str(value)

    return translate


@pass_context
def _task(ctx: Context, value: Any) -> str:
    # Reminders and escalations list tasks as text already in the reader's language
    # (perfcycle.notifications.reminders.describe); a bare action code (PendingTask.action) is
    # worded here, and any other text is shown as given.
    return vocabulary.task_action(str(value), _locale(ctx))


def _with_locale(fn: Callable[[Any, str], str]) -> Callable[[Context, Any], str]:
    @pass_context
    def apply(ctx: Context, value: Any) -> str:
        return fn(value, _locale(ctx))

    return apply


FILTERS: dict[str, Callable[..., Any]] = {
    "date": _with_locale(format_date),
    "day": _with_locale(format_day),
    "when": _with_locale(format_when),
    "period": _with_locale(format_period),
    "stage": _with_locale(stage_title),
    "rater_type": _lookup(vocabulary.RATER_TYPES),
    "outcome": _lookup(vocabulary.APPEAL_OUTCOMES),
    "task": _task,
}
