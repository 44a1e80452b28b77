"""The one way stages enqueue mail: the policy says which template goes to whom on an event.

A stage names the people concerned, each with a role (employee, rater, manager, owner) and what
their mail says; `notify` keeps those the policy's `to` lists, adds the mailing lists it names
(hr, committee, supervision), fills in what every mail shows (name, cycle, period, deadline) and
writes the outbox rows in the caller's transaction.

A mail about a task carries a portal link whose token is random and stored hashed. It is made
only for a row that is new: a re-run stage finds its keys already in the outbox and creates
neither a mail nor a token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import Cycle, OutboxMessage, StageInstance
from perfcycle.domain.policy.schema import Notifications, Policy
from perfcycle.notifications import links, outbox, task_kinds, vocabulary
from perfcycle.notifications.events import GROUP_ROLES, Role
from perfcycle.notifications.task_kinds import TaskKind

# A task link outlives its deadline: a stage may be extended, and the portal says "closed"
# better than a dead link does.
LINK_GRACE = timedelta(days=30)
# Mailing lists have no locale of their own; the organisation's working language.
GROUP_LOCALE = "zh-CN"
_CHUNK = 1000


class Person(Protocol):
    """An employee row, or anything with the fields a mail needs."""

    @property
    def id(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def locale(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class TaskLink:
    """The portal task a mail's link opens. cycle_id and due_at default to the notify call's."""

    kind: TaskKind
    ref: str
    cycle_id: int | None = None
    due_at: datetime | None = None


@dataclass(frozen=True)
class ListedTask:
    """One entry of a mail listing several tasks (the digest); its link lands in its entry."""

    context: Mapping[str, Any]
    link: TaskLink | None = None


@dataclass(frozen=True)
class Recipient:
    role: Role
    email: str
    locale: str
    name: str
    person_id: str | None = None
    # What this recipient's mail says beyond the call's shared context.
    context: Mapping[str, Any] = field(default_factory=dict)
    link: TaskLink | None = None
    tasks: Sequence[ListedTask] = ()
    # One mail per (recipient, occurrence): e.g. an owner gets one per improvement plan.
    occurrence: str | None = None

    @classmethod
    def person(cls, role: Role, person: Person, **details: Any) -> Recipient:
        return cls(role, person.email, person.locale, person.name, person.id, **details)


def group(role: Role, **details: Any) -> Recipient:
    """A mailing list from the settings (hr, committee, supervision)."""
    settings = get_settings()
    email = {
        Role.hr: settings.hr_email,
        Role.committee: settings.committee_email,
        Role.supervision: settings.supervision_email,
    }[role]
    name = vocabulary.GROUP_NAMES[role].get(GROUP_LOCALE)
    return Recipient(role, email, GROUP_LOCALE, name, **details)


def hr_standing_in(role: Role, **details: Any) -> Recipient:
    """HR receives what would go to the manager or owner of someone who has none."""
    return replace(group(Role.hr, **details), role=role)


def notify(
    session: Session,
    cycle: Cycle | None,
    policy: Policy | None,
    event: str,
    recipients: Sequence[Recipient],
    occurrence: str,
    context: Mapping[str, Any] | None = None,
    *,
    due_at: datetime | None = None,
    stage: str | None = None,
) -> int:
    """Enqueue `event`'s mail for the recipients the policy names; returns the rows added.

    `policy` None (a cycle without a policy snapshot) means the default notifications. The
    idempotency key is cycle:recipient:template:occurrence, so a repeated call adds nothing.
    """
    rules = policy.notifications if policy is not None else Notifications()
    rule = rules.rule(event, stage)
    if not rule.enabled:
        return 0
    chosen = [r for r in recipients if r.role in rule.to]
    named = {r.role for r in chosen}
    chosen += [group(role) for role in rule.to if role in GROUP_ROLES and role not in named]
    shared = _shared_context(cycle, context or {}, due_at)
    drafts = [
        _draft(cycle, policy, event, rule.template, r, r.occurrence or occurrence, shared, due_at)
        for r in chosen
    ]
    return _enqueue(session, drafts)


def stage_of(session: Session, cycle_id: int, stage: str) -> StageInstance | None:
    """The cycle's instance of a stage (for a service call's deadline and attempt)."""
    return session.scalar(
        select(StageInstance).where(StageInstance.cycle_id == cycle_id, StageInstance.name == stage)
    )


# ---------------------------------------------------------------- building the rows


@dataclass(frozen=True)
class _Draft:
    mail: outbox.Mail
    # Where each link goes: None -> context["link"], i -> context["tasks"][i]["link"].
    link_slots: tuple[tuple[int | None, links.LinkRequest], ...]


def _shared_context(
    cycle: Cycle | None, context: Mapping[str, Any], due_at: datetime | None
) -> dict[str, Any]:
    shared: dict[str, Any] = {}
    if cycle is not None:
        shared.update(cycle_id=cycle.id, period=cycle.period, policy=cycle.policy)
    if due_at is not None:
        shared["due_at"] = due_at.isoformat()
    shared.update(_jsonable(context))
    return shared


def _draft(
    cycle: Cycle | None,
    policy: Policy | None,
    event: str,
    template: str,
    r: Recipient,
    occurrence: str,
    shared: dict[str, Any],
    due_at: datetime | None,
) -> _Draft:
    context = {**shared, **_jsonable(r.context), "name": r.name, "role": r.role.value}
    if policy is not None:
        context["cycle_title"] = policy.title.get(r.locale)
    requests: list[tuple[int | None, links.LinkRequest]] = []
    if r.tasks:
        context["tasks"] = [_jsonable(t.context) for t in r.tasks]
        for i, task in enumerate(r.tasks):
            request = _link_request(r, event, task.link, cycle, due_at)
            if request is not None:
                requests.append((i, request))
    request = _link_request(r, event, r.link, cycle, due_at)
    if request is not None:
        requests.append((None, request))
    mail = outbox.Mail(
        cycle_id=cycle.id if cycle is not None else None,
        recipient_id=r.person_id,
        recipient_email=r.email,
        locale=r.locale,
        template=template,
        occurrence=occurrence,
        context=context,
    )
    return _Draft(mail, tuple(requests))


def _link_request(
    r: Recipient, event: str, task: TaskLink | None, cycle: Cycle | None, due_at: datetime | None
) -> links.LinkRequest | None:
    if task is None:
        return None
    task_kinds.check_link(task.kind, event)
    # A mailing list has no person to bind a token to: its mail carries no task link.
    if r.person_id is None:
        return None
    cycle_id = task.cycle_id if task.cycle_id is not None else cycle.id if cycle else None
    if cycle_id is None:
        raise ValueError(f"task link {task.kind}:{task.ref} has no cycle")
    base = task.due_at or due_at or clock.now()
    return links.LinkRequest(
        r.person_id, cycle_id, task.kind, task.ref, max(base, clock.now()) + LINK_GRACE
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


# ---------------------------------------------------------------- writing them


def _enqueue(session: Session, drafts: Sequence[_Draft]) -> int:
    unique: dict[str, _Draft] = {}
    for draft in drafts:
        unique.setdefault(draft.mail.idempotency_key, draft)
    existing = _existing_keys(session, list(unique))
    fresh = [d for key, d in unique.items() if key not in existing]
    now = clock.now()
    mails: list[outbox.Mail] = []
    made: list[tuple[str, links.NewLink]] = []
    for draft in fresh:
        context = dict(draft.mail.context)
        if "tasks" in context:
            context["tasks"] = [dict(t) for t in context["tasks"]]
        for slot, request in draft.link_slots:
            link = links.new_link(request, now)
            made.append((draft.mail.idempotency_key, link))
            if slot is None:
                context["link"] = link.url
            else:
                context["tasks"][slot]["link"] = link.url
        mails.append(replace(draft.mail, context=context))
    added = outbox.enqueue(session, mails)
    if added < len(mails):
        # Another transaction wrote some of these keys meanwhile (PostgreSQL): keep only the
        # tokens whose link is in a stored row, so no token exists for a mail never sent.
        stored = _stored_links(session, {key for key, _ in made})
        made = [(key, link) for key, link in made if link.url in stored]
    links.save_links(session, [link for _, link in made])
    return added


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _existing_keys(session: Session, keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(
            session.scalars(
                select(OutboxMessage.idempotency_key).where(
                    OutboxMessage.idempotency_key.in_(chunk)
                )
            )
        )
    return found


def _stored_links(session: Session, keys: set[str]) -> set[str]:
    urls: set[str] = set()
    for chunk in _chunks(sorted(keys)):
        for context in session.scalars(
            select(OutboxMessage.context).where(OutboxMessage.idempotency_key.in_(chunk))
        ):
            urls.update(links_in(context))
    return urls


def links_in(context: Mapping[str, Any]) -> list[str]:
    found = [context["link"]] if isinstance(context.get("link"), str) else []
    for task in context.get("tasks") or []:
        if isinstance(task, Mapping) and isinstance(task.get("link"), str):
            found.append(task["link"])
    return found


def without_links(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context with every task link blanked: what a delivered row keeps.

    A link carries its token in clear, and the token table stores only hashes so that a copy
    of the database opens nobody's tasks; a sent row must not undo that.
    """
    kept = dict(context)
    if isinstance(kept.get("link"), str):
        kept["link"] = None
    if kept.get("tasks"):
        kept["tasks"] = [
            {**t, "link": None} if isinstance(t, Mapping) and isinstance(t.get("link"), str) else t
            for t in kept["tasks"]
        ]
    return kept
