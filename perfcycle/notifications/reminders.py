"""What the cycle clock mails on every tick: reminders, escalations and check-ins due.

- `reminder`: a daily digest. When one of a person's unfinished tasks reaches a reminder offset
  (policy `notifications.reminders.days_before`, per stage or global) it was not reminded of
  yet, the person gets one mail listing all their pending tasks across cycles and stages, each
  with its portal link. At most one a day (key `-:person:reminder:YYYY-MM-DD`); an offset that
  comes due after today's digest waits for tomorrow's.
- `escalation`: once per stage attempt, when a stage is still open `after_overdue_days` past
  its deadline (the one set when it opened: extensions and grace periods are late already),
  each overdue person's manager (HR for someone without one) gets the list of their overdue
  people, or HR gets the whole list (`to: hr`).
- `improvement_checkin_due`: from the policy's day of the month, the owner of each open
  improvement plan without a check-in for the month, once a month.

Everything is idempotent through the outbox keys: the clock may tick as often as it likes.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.domain import engine
from perfcycle.domain.models import (
    Cycle,
    Employee,
    ImprovementPlan,
    OutboxMessage,
    PlanCheckin,
    StageInstance,
    StageName,
)
from perfcycle.domain.policy.schema import Extend, Policy, Stage
from perfcycle.domain.policy.snapshot import cycle_policy_or_none
from perfcycle.domain.stages.base import PendingTask, PendingWork, StageContext
from perfcycle.notifications import vocabulary
from perfcycle.notifications.events import PEOPLE_STAGES, Role
from perfcycle.notifications.notify import (
    GROUP_LOCALE,
    ListedTask,
    Recipient,
    TaskLink,
    group,
    hr_standing_in,
    notify,
)
from perfcycle.notifications.render import display_zone

# A plan gets its first monthly check-in reminder only if it has existed this long by then.
MIN_PLAN_AGE = timedelta(days=7)
SHOWN_NAMES = 5
_CHUNK = 1000


@dataclass(frozen=True)
class OpenStage:
    """An open stage of a running cycle where people have tasks."""

    cycle: Cycle
    policy: Policy
    inst: StageInstance
    handler: PendingWork

    @property
    def rules(self) -> Stage:
        return self.policy.stage(self.inst.name)

    def pending(self, session: Session) -> dict[str, list[PendingTask]]:
        return self.handler.pending(StageContext(session, self.cycle, self.policy, self.inst))


def tick(session: Session, now: datetime) -> dict[str, int]:
    """All three, as the cycle clock runs them; counts of mails enqueued."""
    return {
        "reminders": due_reminders(session, now),
        "escalations": due_escalations(session, now),
        "checkins": due_checkins(session, now),
    }


def open_people_stages(session: Session, cycle_id: int | None = None) -> list[OpenStage]:
    """The open stages where people have tasks, of every running cycle or of one."""
    query = (
        select(Cycle, StageInstance)
        .join(StageInstance, StageInstance.cycle_id == Cycle.id)
        .where(
            Cycle.state == "running",
            StageInstance.state == "open",
            StageInstance.name.in_([s.value for s in PEOPLE_STAGES]),
        )
        .order_by(Cycle.id, StageInstance.position)
    )
    if cycle_id is not None:
        query = query.where(Cycle.id == cycle_id)
    rows = session.execute(query).tuples()
    found = []
    for cycle, inst in rows:
        policy = cycle_policy_or_none(cycle)
        handler = engine.handler_for(inst.name)
        if policy is not None and isinstance(handler, PendingWork):
            found.append(OpenStage(cycle, policy, inst, handler))
    return found


def describe(task: PendingTask, locale: str) -> str:
    """The task in the reader's language, e.g. 'Rate Li Lei, Han Mei and 4 more'."""
    zh = locale.lower().startswith("zh")
    return vocabulary.task_action(task.action, locale, who=_names(task.subjects, zh))


def _names(names: Sequence[str], zh: bool) -> str:
    shown, rest = list(names[:SHOWN_NAMES]), len(names) - SHOWN_NAMES
    if zh:
        return "、".join(shown) + (f"等 {len(names)} 人" if rest > 0 else "")
    if rest > 0:
        return ", ".join(shown) + f" and {rest} more"
    return " and ".join([", ".join(shown[:-1]), shown[-1]]) if len(shown) > 1 else "".join(shown)


# ---------------------------------------------------------------- reminders


@dataclass(frozen=True)
class _Entry:
    person_id: str
    task: PendingTask
    stage: OpenStage
    # Set when the task is at a reminder offset: cycle:stage:attempt:deadline:days.
    reminder_key: str | None


def due_reminders(session: Session, now: datetime) -> int:
    """Enqueue today's digests for people with a task at a reminder offset not yet reminded."""
    stages = open_people_stages(session)
    if all(_reminder_key(s, now) is None for s in stages):
        return 0  # no stage is at an offset: spare listing everyone's pending work
    entries = [e for s in stages for e in _reminder_entries(session, s, now)]
    waiting: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        if e.reminder_key is not None:
            waiting[e.person_id].add(e.reminder_key)
    if not waiting:
        return 0
    longest = max(max(s.policy.notifications.reminder_days(s.inst.name) or [0]) for s in stages)
    reminded = _reminded(session, sorted(waiting), now - timedelta(days=longest + 1))
    due = {p for p, keys in waiting.items() if keys - reminded.get(p, set())}
    people = _active_people(session, due)
    mine: dict[str, list[_Entry]] = defaultdict(list)
    for e in entries:
        if e.person_id in people:
            mine[e.person_id].append(e)
    digests: dict[int, tuple[Policy, list[Recipient]]] = {}
    for person_id, listed in sorted(mine.items()):
        listed.sort(key=lambda e: (e.stage.inst.due_at, e.stage.cycle.id, e.stage.inst.position))
        # The digest follows the policy of its most urgent reminded task.
        lead = next(e for e in listed if e.reminder_key is not None)
        _, recipients = digests.setdefault(lead.stage.cycle.id, (lead.stage.policy, []))
        recipients.append(_digest_for(people[person_id], lead, listed))
    # "One a day" is the reader's day: keyed by the local date, not UTC's.
    day = now.astimezone(display_zone()).date().isoformat()
    return sum(
        notify(session, None, policy, "reminder", recipients, day)
        for policy, recipients in digests.values()
    )


def remind_now(session: Session, cycle_id: int, now: datetime) -> tuple[int, int]:
    """HR's "remind now": a digest like the daily one to everyone with unfinished work in the
    cycle's open stages, keyed by the minute so a double click sends nothing twice.
    Returns (people, mails queued)."""
    stages = open_people_stages(session, cycle_id)
    entries = [
        _Entry(person_id, task, stage, None)
        for stage in stages
        for person_id, tasks in stage.pending(session).items()
        for task in tasks
    ]
    people = _active_people(session, {e.person_id for e in entries})
    mine: dict[str, list[_Entry]] = defaultdict(list)
    for e in entries:
        if e.person_id in people:
            mine[e.person_id].append(e)
    recipients = []
    for person_id, listed in sorted(mine.items()):
        listed.sort(key=lambda e: (e.stage.inst.due_at, e.stage.inst.position))
        recipients.append(_digest_for(people[person_id], listed[0], listed))
    if not stages or not recipients:
        return 0, 0
    cycle, policy = stages[0].cycle, stages[0].policy
    occurrence = f"manual:{now.strftime('%Y-%m-%dT%H:%M')}"
    return len(recipients), notify(session, cycle, policy, "reminder", recipients, occurrence)


def _reminder_entries(session: Session, stage: OpenStage, now: datetime) -> list[_Entry]:
    rule = stage.policy.notifications.rule("reminder", stage.inst.name)
    if not rule.enabled:
        return []
    key = _reminder_key(stage, now)
    pending = stage.pending(session)
    return [
        _Entry(person_id, task, stage, key)
        for person_id, tasks in pending.items()
        for task in tasks
        if task.role in rule.to
    ]


def _reminder_key(stage: OpenStage, now: datetime) -> str | None:
    """The offset the stage is at now (the nearest one passed), None outside any."""
    inst = stage.inst
    if now >= inst.due_at:
        return None
    passed = [
        days
        for days in stage.policy.notifications.reminder_days(inst.name)
        # An offset before the stage opened would remind people of a task mailed minutes ago.
        if inst.opened_at < inst.due_at - timedelta(days=days) <= now
    ]
    if not passed:
        return None
    return f"{stage.cycle.id}:{inst.name}:{inst.attempt}:{inst.due_at.isoformat()}:{min(passed)}"


def _reminded(session: Session, people: Sequence[str], since: datetime) -> dict[str, set[str]]:
    """person -> the reminder keys their digests since `since` covered."""
    covered: dict[str, set[str]] = defaultdict(set)
    for chunk in _chunks(people):
        rows = session.execute(
            select(OutboxMessage.recipient_id, OutboxMessage.context).where(
                OutboxMessage.cycle_id.is_(None),
                OutboxMessage.recipient_id.in_(chunk),
                OutboxMessage.created_at >= since,
            )
        ).tuples()
        for person_id, context in rows:
            for task in context.get("tasks") or []:
                if isinstance(task, Mapping) and task.get("reminder_key") and person_id:
                    covered[person_id].add(str(task["reminder_key"]))
    return covered


def _digest_for(person: Employee, lead: _Entry, listed: Sequence[_Entry]) -> Recipient:
    tasks = [
        ListedTask(
            {
                "cycle_id": e.stage.cycle.id,
                "period": e.stage.cycle.period,
                "cycle_title": e.stage.policy.title.get(person.locale),
                "stage": e.stage.inst.name,
                "what": describe(e.task, person.locale),
                "action": e.task.action,
                "role": e.task.role.value,
                "due_at": e.stage.inst.due_at,
                **({"reminder_key": e.reminder_key} if e.reminder_key else {}),
            },
            TaskLink(e.task.kind, e.task.ref, e.stage.cycle.id, e.stage.inst.due_at),
        )
        for e in listed
    ]
    return Recipient.person(
        lead.task.role,
        person,
        context={"count": len(tasks), "due_at": listed[0].stage.inst.due_at},
        tasks=tasks,
    )


# ---------------------------------------------------------------- escalations


def deadline_as_opened(inst: StageInstance, stage: Stage) -> datetime:
    """The stage's deadline before any extension or escalation grace was added to it."""
    due = inst.due_at
    if isinstance(stage.on_deadline, Extend):
        due -= timedelta(days=stage.on_deadline.extend * inst.extensions)
    elif stage.on_deadline == "escalate" and inst.escalated:
        due -= timedelta(days=stage.escalation_grace_days)
    return due


def due_escalations(session: Session, now: datetime) -> int:
    """Tell managers (or HR) who is overdue, once per stage attempt."""
    added = 0
    for stage in open_people_stages(session):
        notifications = stage.policy.notifications
        if not notifications.rule("escalation", stage.inst.name).enabled:
            continue
        rule = notifications.escalation_for(stage.inst.name)
        deadline = deadline_as_opened(stage.inst, stage.rules)
        if now < deadline + timedelta(days=rule.after_overdue_days):
            continue
        pending = stage.pending(session)
        if not pending:
            continue
        recipients = _escalation_recipients(session, pending, to_hr=rule.to == "hr")
        added += notify(
            session,
            stage.cycle,
            stage.policy,
            "escalation",
            recipients,
            f"{stage.inst.name}:{stage.inst.attempt}",
            {
                "stage": stage.inst.name,
                "deadline": deadline.isoformat(),
                "days_overdue": (now - deadline).days,
            },
            due_at=deadline,
            stage=stage.inst.name,
        )
    return added


def _escalation_recipients(
    session: Session, pending: Mapping[str, list[PendingTask]], *, to_hr: bool
) -> list[Recipient]:
    people = _people(session, pending)
    managers = _active_people(
        session, {p.manager_id for p in people.values() if p.manager_id is not None}
    )
    by_manager: dict[str | None, list[str]] = defaultdict(list)
    for person_id in sorted(pending):
        person = people.get(person_id)
        manager_id = person.manager_id if person is not None else None
        by_manager[None if to_hr or manager_id not in managers else manager_id].append(person_id)
    recipients = []
    for manager_id, overdue in by_manager.items():
        locale = managers[manager_id].locale if manager_id is not None else GROUP_LOCALE
        context = {
            "overdue": [_overdue(p, people.get(p), pending[p], locale) for p in overdue],
            "count": len(overdue),
        }
        if manager_id is not None:
            recipients.append(Recipient.person(Role.manager, managers[manager_id], context=context))
        elif to_hr:
            recipients.append(group(Role.hr, context=context))
        else:
            recipients.append(hr_standing_in(Role.manager, context=context))
    return recipients


def _overdue(
    person_id: str, person: Employee | None, tasks: Sequence[PendingTask], locale: str
) -> dict[str, Any]:
    return {
        "employee_id": person_id,
        "name": person.name if person is not None else person_id,
        "tasks": [describe(t, locale) for t in tasks],
    }


# ---------------------------------------------------------------- improvement check-ins


def due_checkins(session: Session, now: datetime) -> int:
    """Remind owners of open plans without a check-in for this month, once a month."""
    month = now.strftime("%Y-%m")
    rows = session.execute(
        select(ImprovementPlan, StageInstance.opened_at, Cycle)
        .join(Cycle, Cycle.id == ImprovementPlan.cycle_id)
        .join(
            StageInstance,
            (StageInstance.cycle_id == Cycle.id)
            & (StageInstance.name == StageName.improvement.value),
        )
        .where(
            Cycle.state == "running",
            StageInstance.state == "open",
            ImprovementPlan.state == "open",
        )
        .order_by(Cycle.id, ImprovementPlan.employee_id)
    ).tuples()
    by_cycle: dict[int, tuple[Cycle, Policy, list[ImprovementPlan]]] = {}
    for plan, opened_at, cycle in rows:
        policy = cycle_policy_or_none(cycle)
        if policy is None or not policy.notifications.rule("improvement_checkin_due").enabled:
            continue
        remind_from = datetime(
            now.year, now.month, policy.notifications.checkins.day_of_month, tzinfo=UTC
        )
        if now >= remind_from and remind_from - opened_at >= MIN_PLAN_AGE:
            by_cycle.setdefault(cycle.id, (cycle, policy, []))[2].append(plan)
    checked = _checked_in(
        session, [p.id for _, _, plans in by_cycle.values() for p in plans], month
    )
    added = 0
    for cycle, policy, plans in by_cycle.values():
        recipients = [
            r
            for plan in plans
            if plan.id not in checked
            for r in _checkin_recipients(session, plan, month)
        ]
        if recipients:
            added += notify(
                session,
                cycle,
                policy,
                "improvement_checkin_due",
                recipients,
                f"checkin:{month}",
                {"month": month},
                due_at=_end_of_month(now),
            )
    return added


def _checkin_recipients(session: Session, plan: ImprovementPlan, month: str) -> list[Recipient]:
    employee = session.get_one(Employee, plan.employee_id)
    owner = session.get(Employee, plan.owner_id) if plan.owner_id else None
    details: dict[str, Any] = {
        "context": {
            "plan_id": plan.id,
            "employee_id": employee.id,
            "employee_name": employee.name,
            "goal": plan.goal,
            "deadline": plan.deadline.isoformat(),
        },
        # One mail per plan and month, whoever owns several plans.
        "occurrence": f"checkin:{plan.id}:{month}",
    }
    link = TaskLink("improvement_checkin", f"plan:{plan.id}:{month}")
    return [
        Recipient.person(Role.owner, owner, link=link, **details)
        if owner is not None and owner.active
        else hr_standing_in(Role.owner, **details),
        Recipient.person(Role.employee, employee, link=link, **details),
    ]


def _checked_in(session: Session, plan_ids: Sequence[int], month: str) -> set[int]:
    found: set[int] = set()
    for start in range(0, len(plan_ids), _CHUNK):
        found.update(
            session.scalars(
                select(PlanCheckin.plan_id).where(
                    PlanCheckin.plan_id.in_(plan_ids[start : start + _CHUNK]),
                    PlanCheckin.month == month,
                )
            )
        )
    return found


def _end_of_month(now: datetime) -> datetime:
    last = calendar.monthrange(now.year, now.month)[1]
    return datetime(now.year, now.month, last, 23, 59, tzinfo=UTC)


# ---------------------------------------------------------------- people


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _people(session: Session, ids: Iterable[str]) -> dict[str, Employee]:
    found: dict[str, Employee] = {}
    for chunk in _chunks(sorted(ids)):
        found.update(
            (e.id, e) for e in session.scalars(select(Employee).where(Employee.id.in_(chunk)))
        )
    return found


def _active_people(session: Session, ids: Iterable[str]) -> dict[str, Employee]:
    return {i: e for i, e in _people(session, ids).items() if e.active}
