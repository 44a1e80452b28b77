"""The mail events: which events send mail, who may receive each, and the recipient roles.

The policy schema (perfcycle/domain/policy/schema.py) owns only the shape of a policy's
`notifications` section; which events exist and whose mail context each one can fill is decided
here, next to the templates that are named after the events. (The words mails and pages share
are in vocabulary.py.)
"""

from __future__ import annotations

from enum import StrEnum

from perfcycle.domain.models import StageName


class Role(StrEnum):
    """Who a mail goes to: people the stage names, or one of the mailing lists in settings."""

    employee = "employee"
    rater = "rater"
    manager = "manager"
    owner = "owner"
    hr = "hr"
    committee = "committee"
    supervision = "supervision"


# Roles that are mailing lists (settings.hr_email, committee_email, supervision_email).
GROUP_ROLES = frozenset({Role.hr, Role.committee, Role.supervision})
# Stages where people have tasks of their own: reminders and escalations apply to these.
PEOPLE_STAGES = (
    StageName.target_setting,
    StageName.evaluation,
    StageName.interview,
    StageName.improvement,
    StageName.appeal,
)

_E, _R, _M, _O = Role.employee, Role.rater, Role.manager, Role.owner
_HR, _COMMITTEE, _SUPERVISION = Role.hr, Role.committee, Role.supervision
_GROUPS = (_HR, _COMMITTEE, _SUPERVISION)

# event -> (default recipients, the roles whose mail context the code writes). A role outside
# the second tuple would get a mail its template cannot fill, so the policy check refuses it.
EVENT_ROLES: dict[str, tuple[tuple[Role, ...], tuple[Role, ...]]] = {
    "goals_to_agree": ((_E,), (_E,)),
    "goals_returned": ((_E,), (_E,)),
    "goals_submitted": ((_M,), (_M,)),
    "evaluation_assigned": ((_R,), (_R,)),
    "stage_opened": ((_HR,), _GROUPS),
    "stage_closed": ((_HR,), _GROUPS),
    "stage_escalated": ((_HR,), _GROUPS),
    "calibration_ready": ((_COMMITTEE,), (_COMMITTEE, _HR)),
    # Written to the employee, so no HR copy: "your results", "your appeal" would mislead HR.
    "results_released": ((_E,), (_E,)),
    "interview_scheduled": ((_E, _M), (_E, _M)),
    "interview_recorded": ((_E,), (_E,)),
    "improvement_plan_created": ((_E, _O), (_E, _O)),
    "improvement_plan_closed": ((_E,), (_E,)),
    "improvement_checkin_due": ((_O,), (_O, _E)),
    "appeal_window_open": ((_E,), (_E,)),
    "appeal_received": ((_E, _SUPERVISION), (_E, _SUPERVISION)),
    "appeal_decided": ((_E, _M), (_E, _M)),
    "reminder": ((_E, _R, _M, _O), (_E, _R, _M, _O)),
    "escalation": ((_M,), (_M, _HR)),
}
# Templates are named after the events (perfcycle/notifications/templates/<locale>/<event>.*.j2).
TEMPLATES = tuple(EVENT_ROLES)
