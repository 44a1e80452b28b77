"""Who may act on or see which record: the one home of every "may X do Y" in perfcycle.

An `Actor` is a person (the portal's signed-in employee, the demo's players) or an operator
without a person (the CLI's `--actor hr-...`, the system itself), with the roles they hold:
hr_admin, committee, supervision, auditor, and employee / manager as the org chart gives them.
The portal, the CLI and the demo all pass an Actor to the domain's service functions, which
ask this module and refuse with NotAllowed.

The rules, in one place:
- HR (role hr_admin) stands in for the manager of someone who has none: it approves or returns
  their goal sheet and follows up their improvement plan.
- A person's manager is the one the cycle recorded for them (Participant.manager_id), not
  today's org chart: who managed them at launch answers for that cycle.
- Questions about records a stage creates return a `Refusal` (a Problem) or None, so a service
  can report it with the other problems of the same request (`raise_problems`); questions
  about goal sheets refuse at once, before the sheet's state is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from perfcycle.core.errors import InvalidInput, NotAllowed, Problem
from perfcycle.domain import audit
from perfcycle.domain.models import Appeal, ImprovementPlan, Interview, Participant, RaterAssignment

HR_ADMIN = "hr_admin"
COMMITTEE = "committee"
SUPERVISION = "supervision"
AUDITOR = "auditor"
EMPLOYEE = "employee"
MANAGER = "manager"
# Granted to a person (PortalRole rows, `perfcycle roles grant`); employee and manager come from
# the org chart instead.
GRANTED_ROLES = (HR_ADMIN, COMMITTEE, SUPERVISION, AUDITOR)
ROLES = frozenset({*GRANTED_ROLES, MANAGER, EMPLOYEE})

# Who uses the whole-organisation views, by role: acting on a cycle's progress (reminders, mail
# retries), reading it, reading the audit log, and Prefect's UI (launches, the committee's
# approval).
ACTS_ON_PROGRESS = (HR_ADMIN,)
READS_PROGRESS = (*ACTS_ON_PROGRESS, AUDITOR)
READS_AUDIT_LOG = (AUDITOR, HR_ADMIN)
USES_PREFECT_UI = (HR_ADMIN, COMMITTEE)


@dataclass(frozen=True)
class Actor:
    """Who does something. `label` is the audit name when it is not the person's id (the CLI's
    `hr-alice`, `system`); audit rows keep the strings they always had."""

    person_id: str | None
    roles: frozenset[str] = frozenset()
    label: str | None = None

    @classmethod
    def person(cls, person_id: str, roles: Iterable[str] = ()) -> Actor:
        """A person acting as themself (their audit name is their employee id)."""
        return cls(person_id, frozenset(roles))

    @classmethod
    def hr(cls, name: str = "hr", person_id: str | None = None) -> Actor:
        """An HR administrator; the CLI's operator (`--actor hr-alice`) is one without a person."""
        return cls(person_id, frozenset({HR_ADMIN}), name)

    @classmethod
    def named(cls, name: str, *roles: str) -> Actor:
        """Someone acting through roles alone, by a name that is no employee id (the demo's
        `supervision-chair`)."""
        return cls(None, frozenset(roles), name)

    @classmethod
    def system(cls) -> Actor:
        """perfcycle itself: stage handlers, the clock."""
        return cls(None, frozenset(), audit.SYSTEM)

    @property
    def name(self) -> str:
        """What audit rows store as the actor (and `decided_by`, `recorded_by`, ...)."""
        return self.label or self.person_id or "unknown"

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    def is_(self, person_id: str | None) -> bool:
        """Is this actor the person `person_id` (never true for no person)?"""
        return person_id is not None and self.person_id == person_id

    @property
    def is_hr(self) -> bool:
        return HR_ADMIN in self.roles


@dataclass(frozen=True)
class Refusal(Problem):
    """A problem that says the actor may not do this, rather than that the input is wrong."""


def refusals(*found: Refusal | None) -> list[Problem]:
    """The refusals among answers to this module's questions, to add a request's problems to."""
    return [r for r in found if r is not None]


def raise_problems(problems: Sequence[Problem]) -> None:
    """Refuse with every problem found: NotAllowed when any is a refusal, InvalidInput else."""
    if not problems:
        return
    if any(isinstance(p, Refusal) for p in problems):
        raise NotAllowed(problems)
    raise InvalidInput(problems)


def manager_in_cycle(session: Session, cycle_id: int, employee_id: str) -> str | None:
    """The employee's manager as the cycle recorded them (not today's org chart)."""
    return session.scalar(
        select(Participant.manager_id).where(
            Participant.cycle_id == cycle_id, Participant.employee_id == employee_id
        )
    )


# ---------------------------------------------------------------- goal sheets


def require_own_goals(actor: Actor, employee_id: str, doing: str = "change") -> None:
    """Only the employee submits or changes their own goal sheet."""
    if not actor.is_(employee_id):
        raise NotAllowed(
            [
                Refusal(
                    f"only the employee can {doing} their own goals",
                    field="actor",
                    code="not_own_goals",
                )
            ]
        )


def require_goal_approver(session: Session, actor: Actor, cycle_id: int, employee_id: str) -> None:
    """The manager the cycle recorded approves or returns the sheet; HR for someone without."""
    manager = manager_in_cycle(session, cycle_id, employee_id)
    allowed = actor.is_(manager) if manager else actor.is_hr
    if not allowed:
        who = f"their manager {manager}" if manager else "HR"
        raise NotAllowed(
            [
                Refusal(
                    f"only {who} can approve or return {employee_id}'s goals",
                    field="actor",
                    code="not_the_approver" if manager else "not_the_approver_hr",
                    values=(("manager", manager or ""), ("employee", employee_id)),
                )
            ]
        )


class Reviewee(NamedTuple):
    employee_id: str
    # True: the actor reviews the sheet as HR, standing in for a manager the person lacks.
    as_hr: bool


def reviews_goals_of(actor: Actor) -> ColumnElement[bool] | None:
    """The Participant rows whose goal sheets the actor approves or returns (the rule of
    require_goal_approver as SQL): the reports the cycle recorded for them and, for HR,
    everyone without a manager. None: nobody's."""
    mine = [Participant.manager_id == actor.person_id] if actor.person_id else []
    standing_in = [Participant.manager_id.is_(None)] if actor.is_hr else []
    if not mine and not standing_in:
        return None
    return or_(*mine, *standing_in)


def goal_reviewees(session: Session, actor: Actor, cycle_id: int) -> list[Reviewee]:
    """Whose goal sheets the actor approves or returns in the cycle, in employee id order."""
    reviewed = reviews_goals_of(actor)
    if reviewed is None:
        return []
    rows = session.execute(
        select(Participant.employee_id, Participant.manager_id)
        .where(Participant.cycle_id == cycle_id, reviewed)
        .order_by(Participant.employee_id)
    ).tuples()
    return [Reviewee(employee_id, manager_id is None) for employee_id, manager_id in rows]


# ---------------------------------------------------------------- evaluations


def evaluation_refusal(actor: Actor, assignment: RaterAssignment) -> Refusal | None:
    """The rater fills their own form; HR enters paper forms on the raters' behalf."""
    if actor.is_(assignment.rater_id) or actor.is_hr:
        return None
    return Refusal("only the rater can save this form", field="actor")


# ---------------------------------------------------------------- interviews


def interview_recorder_refusal(actor: Actor, interview: Interview) -> Refusal | None:
    if actor.is_(interview.manager_id):
        return None
    return Refusal(
        f"only the employee's manager ({interview.manager_id}) may record this "
        f"interview, not {actor.name!r}",
        field="actor",
    )


def interview_acknowledger_refusal(actor: Actor, interview: Interview) -> Refusal | None:
    if actor.is_(interview.employee_id):
        return None
    return Refusal(
        f"only the interviewed employee ({interview.employee_id}) may acknowledge it, "
        f"not {actor.name!r}",
        field="actor",
    )


# ---------------------------------------------------------------- improvement plans


def plan_party_refusal(actor: Actor, plan: ImprovementPlan) -> Refusal | None:
    """The plan's owner or its employee write the plan and its monthly check-ins."""
    parties = {p for p in (plan.owner_id, plan.employee_id) if p}
    return _plan_refusal(actor, plan, parties, "the owner or the employee")


def plan_owner_refusal(actor: Actor, plan: ImprovementPlan) -> Refusal | None:
    """Only the owner closes the plan, saying whether its effect was verified."""
    owner = {plan.owner_id} if plan.owner_id else set()
    return _plan_refusal(actor, plan, owner, "the plan's owner")


def _plan_refusal(
    actor: Actor, plan: ImprovementPlan, allowed: set[str], who: str
) -> Refusal | None:
    # Someone without a manager has no owner: HR follows their plan up.
    if actor.person_id in allowed or (plan.owner_id is None and actor.is_hr):
        return None
    names = ", ".join(sorted(allowed)) or "HR"
    return Refusal(f"only {who} ({names}) may do this, not {actor.name!r}", field="actor")


# ---------------------------------------------------------------- appeals


def appellant_refusal(actor: Actor, appeal: Appeal) -> Refusal | None:
    """Only the employee accepts their results or appeals them."""
    if actor.is_(appeal.employee_id):
        return None
    return Refusal(
        f"only the employee ({appeal.employee_id}) may answer their results, not {actor.name!r}",
        field="actor",
    )


def appeal_decider_refusal(session: Session, actor: Actor, appeal: Appeal) -> Refusal | None:
    """A member of the supervision committee decides, never on their own case: not the
    appellant, nor the manager who evaluated them."""
    if not actor.has(SUPERVISION):
        return Refusal(
            f"only the supervision committee decides appeals, not {actor.name!r}", field="actor"
        )
    if actor.is_(appeal.employee_id):
        return Refusal("an employee cannot decide their own appeal", field="actor")
    manager_id = manager_in_cycle(session, appeal.cycle_id, appeal.employee_id)
    if actor.is_(manager_id):
        return Refusal(
            f"{actor.name} is the appellant's manager and cannot decide the appeal",
            field="actor",
        )
    return None


# ---------------------------------------------------------------- who may see whose records

# In what capacity a viewer reads someone's records: their own, as the manager the cycle recorded
# for them, or through a role that reads everyone's.
Capacity = Literal["self", "manager", "hr", "auditor"]

# Roles that read every participant's records, read-only, and the capacity each reads them in.
READ_ALL_ROLES: dict[str, Capacity] = {HR_ADMIN: "hr", AUDITOR: "auditor"}


def viewing_capacity(
    session: Session, actor: Actor, cycle_id: int, employee_id: str
) -> Capacity | None:
    """In what capacity the actor may read `employee_id`'s records of the cycle; None: not at all.

    The one rule for "may this actor see employee X in cycle C": the person themself, their
    manager in that cycle (Participant.manager_id: who managed them when the cycle was launched
    answers for that cycle, whatever the org chart says today), HR admins and auditors. Callers
    refuse and show nothing on None. "self", "hr" and "auditor" do not imply that the employee
    takes part in the cycle; callers that need a participant check it afterwards.
    """
    if actor.is_(employee_id):
        return "self"
    if actor.person_id is not None and manager_in_cycle(session, cycle_id, employee_id) == (
        actor.person_id
    ):
        return "manager"
    for role, capacity in READ_ALL_ROLES.items():
        if role in actor.roles:
            return capacity
    return None
