"""Every kind of task a mail's link can open, in one registry: where it lands, what it asks.

A task link (TaskToken.task_kind, notify.TaskLink.kind, PendingTask.kind) names one of these
kinds. For each, the registry says which portal page the link lands on (None while the page does
not exist yet: such a link signs the person in and lands on the home page), which pending action
it is (reminders and the home page word it from perfcycle.notifications.vocabulary), and which
mails carry it (by event, whose template is named after it unless the policy picks another).
notify refuses a link of a kind an event is not registered to carry, so the stages, the mails
and the portal cannot drift apart unnoticed; tests/web/test_task_kinds.py opens every page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from perfcycle.notifications.vocabulary import TASK_ACTIONS, ActionWords, TaskAction

TaskKind = Literal[
    "sign_in",
    "goals",
    "goals_approval",
    "evaluation",
    "results",
    "interview",
    "interviews",
    "interview_ack",
    "improvement_plan",
    "improvement_checkin",
    "appeal",
]

SIGN_IN: TaskKind = "sign_in"
HOME = "/"


@dataclass(frozen=True)
class TaskKindInfo:
    # The portal page the link lands on (with ?cycle=ID); None: no page yet, lands on HOME.
    page: str | None
    # The pending task of this kind (PendingTask.action), None for a link that only informs.
    action: TaskAction | None
    # The events whose mail carries a link of this kind.
    events: tuple[str, ...]

    @property
    def wording(self) -> ActionWords | None:
        return TASK_ACTIONS[self.action] if self.action is not None else None


TASK_KINDS: dict[TaskKind, TaskKindInfo] = {
    # The sign-in link's button page (routes/auth.py) leads home: it is about no task.
    "sign_in": TaskKindInfo(HOME, None, ("sign_in_link",)),
    "goals": TaskKindInfo(
        "/goals", "submit_goals", ("goals_to_agree", "goals_returned", "reminder")
    ),
    "goals_approval": TaskKindInfo("/goals", "approve_goals", ("goals_submitted", "reminder")),
    "evaluation": TaskKindInfo("/evaluations", "evaluate", ("evaluation_assigned", "reminder")),
    "results": TaskKindInfo("/me", None, ("results_released",)),
    # The interview, improvement-plan and appeal pages come with their journeys.
    "interview": TaskKindInfo(None, None, ("interview_scheduled",)),
    "interviews": TaskKindInfo(None, "record_interview", ("interview_scheduled", "reminder")),
    "interview_ack": TaskKindInfo(
        None, "acknowledge_interview", ("interview_recorded", "reminder")
    ),
    "improvement_plan": TaskKindInfo(None, "close_plan", ("improvement_plan_created", "reminder")),
    "improvement_checkin": TaskKindInfo(None, None, ("improvement_checkin_due",)),
    "appeal": TaskKindInfo(None, "answer_results", ("appeal_window_open", "reminder")),
}


_BY_NAME: dict[str, TaskKindInfo] = {kind: entry for kind, entry in TASK_KINDS.items()}


def info(kind: str) -> TaskKindInfo | None:
    """The registry's entry for a kind read from a row (a string), None for an unknown one."""
    return _BY_NAME.get(kind)


def page_of(kind: str, cycle_id: int | None) -> str | None:
    """The page a link of this kind opens for the cycle, without the token; None: no page."""
    entry = info(kind)
    if entry is None or entry.page is None:
        return None
    # The home page lists every cycle's tasks: it takes no cycle.
    if cycle_id is None or entry.page == HOME:
        return entry.page
    return f"{entry.page}?cycle={cycle_id}"


def landing(kind: str, cycle_id: int | None) -> str:
    """Where opening a link of this kind lands: its page, else the home page."""
    return page_of(kind, cycle_id) or HOME


def check_link(kind: str, event: str) -> None:
    """Refuse a link of a kind the event's mail is not registered to carry."""
    entry = info(kind)
    if entry is None:
        raise ValueError(f"task link kind {kind!r} is not in perfcycle.notifications.task_kinds")
    if event not in entry.events:
        raise ValueError(
            f"the {event!r} mail carries a {kind!r} link, which task_kinds does not list for it"
        )
