"""Target setting: each participant's indicators become goals that employee and manager sign.

Closed loop, step one (目标设定): the policy's indicators and targets are proposed; the employee
submits (signs); the manager approves (signs) or returns them with a comment. One module per
job: handler (the stage), goals (loading a sheet), sheets (submit, approve, return),
personal_goals (the employee's own SMART goals) and targets (targets of unlocked indicators).
Callers import from here.
"""

from __future__ import annotations

from perfcycle.domain.stages.target_setting.goals import PERSONAL
from perfcycle.domain.stages.target_setting.handler import Handler
from perfcycle.domain.stages.target_setting.personal_goals import (
    GOAL_COMMENT_REQUIRED_FOR,
    PERSONAL_FIELDS,
    PersonalGoalItem,
    personal_goal_items,
    save_personal_goals,
)
from perfcycle.domain.stages.target_setting.sheets import (
    Returned,
    approve_goals,
    last_return,
    return_goals,
    submit_goals,
)
from perfcycle.domain.stages.target_setting.targets import agreed_targets, set_target

__all__ = [
    "GOAL_COMMENT_REQUIRED_FOR",
    "PERSONAL",
    "PERSONAL_FIELDS",
    "Handler",
    "PersonalGoalItem",
    "Returned",
    "agreed_targets",
    "approve_goals",
    "last_return",
    "personal_goal_items",
    "return_goals",
    "save_personal_goals",
    "set_target",
    "submit_goals",
]
