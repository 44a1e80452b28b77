"""The task-kind registry agrees with what the code creates: every kind a stage, the reminders or
the portal names is registered, with its action worded and its mails real templates."""

from __future__ import annotations

from typing import get_args

import pytest

from perfcycle.domain.stages.base import PendingTask
from perfcycle.notifications import task_kinds, vocabulary
from perfcycle.notifications.events import TEMPLATES, Role
from perfcycle.notifications.task_kinds import TASK_KINDS, TaskKind
from perfcycle.web.routes.auth import SIGN_IN_TEMPLATE
from tests.support.task_kinds import declared_kinds


def test_the_registry_lists_every_kind_of_the_type() -> None:
    assert set(TASK_KINDS) == set(get_args(TaskKind))


def test_every_kind_the_code_creates_is_registered_with_its_action() -> None:
    declared = declared_kinds()
    # The scan sees the stage modules and the check-in reminders, or it proves nothing.
    assert {"domain/stages/evaluation/handler.py", "notifications/reminders.py"} <= set(declared)
    for where, pairs in declared.items():
        for kind, action in pairs:
            assert kind in TASK_KINDS, f"{where}: kind {kind!r} is not registered"
            if action is not None:
                assert TASK_KINDS[kind].action == action, f"{where}: {kind!r} is not {action!r}"
    written = {kind for pairs in declared.values() for kind, _ in pairs}
    assert written | {task_kinds.SIGN_IN} == set(TASK_KINDS), "a registered kind nobody creates"


def test_every_action_is_worded_and_every_mail_is_a_template() -> None:
    actions = {entry.action for entry in TASK_KINDS.values() if entry.action is not None}
    assert actions == set(vocabulary.TASK_ACTIONS)
    for kind, entry in TASK_KINDS.items():
        assert entry.events, kind
        assert set(entry.events) <= set(TEMPLATES) | {SIGN_IN_TEMPLATE}, kind
        if entry.action is not None:
            # A pending task is listed in the reminder digest with its link.
            assert "reminder" in entry.events and entry.wording is not None, kind


def test_a_page_is_given_for_the_cycle_and_an_unknown_kind_lands_home() -> None:
    assert task_kinds.page_of("goals_approval", 7) == "/goals?cycle=7"
    assert task_kinds.page_of("appeal", 7) is None
    assert task_kinds.landing("appeal", 7) == task_kinds.HOME
    assert task_kinds.landing("no_such_kind", 7) == task_kinds.HOME
    assert task_kinds.landing(task_kinds.SIGN_IN, 7) == task_kinds.HOME


def test_a_link_or_task_that_disagrees_with_the_registry_is_refused() -> None:
    task_kinds.check_link("goals", "goals_returned")
    with pytest.raises(ValueError, match="does not list"):
        task_kinds.check_link("goals", "results_released")
    with pytest.raises(ValueError, match="not in"):
        task_kinds.check_link("goal", "goals_returned")
    with pytest.raises(ValueError, match="is not 'evaluate'"):
        PendingTask(Role.employee, "evaluate", "goals", "target_setting:1")
