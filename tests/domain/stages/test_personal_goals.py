"""Personal SMART goals and the employee's own targets at target setting: domain and portal.

The shipped external-service policy allows up to 3 personal goals sharing 6% of the total,
scored in `development` (12%), and leaves `first_contact_resolution`'s target unlocked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import get_settings
from perfcycle.domain.access import Actor
from perfcycle.domain.models import AuditEvent, Cycle, Goal
from perfcycle.domain.stages.target_setting import (
    agreed_targets,
    approve_goals,
    save_personal_goals,
    set_target,
    submit_goals,
)
from tests.support import databases
from tests.support.portal import csrf_of, first_report, goal_states, signed_in, t

BLANK = dict.fromkeys(("title", "measure", "target", "deadline", "weight"), " ")
UNLOCKED = "first_contact_resolution"
LOCKED = "csat"


@pytest.fixture
def cycle(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started_cycle: databases.StartedCycle,
) -> Iterator[int]:
    """The demo organisation's external-service cycle, waiting at target setting."""
    yield databases.use_started(started_cycle, db_url, tmp_path, monkeypatch)
    get_settings.cache_clear()


def goal(title: str, weight: str, deadline: str = "2026-12-15", **more: str) -> dict[str, str]:
    return {
        "title": title,
        "measure": more.get("measure", "share of my tickets closed on first contact (%)"),
        "target": more.get("target", "90"),
        "deadline": deadline,
        "weight": weight,
    }


def sheet(url: str, cycle_id: int, person: str) -> dict[str, Goal]:
    with session_scope(url) as s:
        rows = s.scalars(
            select(Goal).where(Goal.cycle_id == cycle_id, Goal.employee_id == person)
        ).all()
        s.expunge_all()
        return {g.indicator_id: g for g in rows}


def problems_of(exc: pytest.ExceptionInfo[InvalidInput]) -> dict[str, str]:
    return {str(p.field): p.message for p in exc.value.problems}


# ---------------------------------------------------------------- domain


def test_personal_goals_take_the_share_from_their_category_and_the_sheet_adds_up_to_100(
    db_url: str, cycle: int
) -> None:
    employee, _ = first_report(db_url, cycle)
    before = sheet(db_url, cycle, employee)
    assert math.isclose(sum(g.weight for g in before.values()), 100)

    with session_scope(db_url) as s:
        kept = save_personal_goals(
            s,
            cycle,
            employee,
            [goal("Run two FAQ workshops", "4"), BLANK, goal("Cut reopen rate", "2")],
            actor=Actor.person(employee),
        )

    after = sheet(db_url, cycle, employee)
    assert kept == 2
    personal = [g for g in after.values() if g.kind == "personal"]
    assert [(g.indicator_id, g.title, g.weight) for g in personal] == [
        ("personal-1", "Run two FAQ workshops", 4.0),
        ("personal-2", "Cut reopen rate", 2.0),
    ]
    assert {g.category for g in personal} == {"development"} and not any(g.locked for g in personal)
    assert math.isclose(sum(g.weight for g in after.values()), 100)
    # Development (12%) gives up the 6%: its indicators keep half of their weight.
    for indicator_id in ("learning", "teamwork", "service_innovation"):
        assert math.isclose(after[indicator_id].weight, before[indicator_id].weight / 2)
    assert after[LOCKED].weight == before[LOCKED].weight

    with session_scope(db_url) as s:  # removing them gives the category its weight back
        assert save_personal_goals(s, cycle, employee, [], actor=Actor.person(employee)) == 0
    restored = sheet(db_url, cycle, employee)
    assert {k: g.weight for k, g in restored.items()} == {k: g.weight for k, g in before.items()}


def test_bad_personal_goals_name_row_and_field_and_change_nothing(db_url: str, cycle: int) -> None:
    employee, _ = first_report(db_url, cycle)
    before = sheet(db_url, cycle, employee)
    rows = [
        goal("ok", "3", measure="x"),  # title and measure too short
        BLANK,  # skipped, but still counted: problems name rows as the form numbers them
        goal("Workshops", "three", deadline="2027-02-01", target="lots"),
    ]

    with pytest.raises(InvalidInput) as refused, session_scope(db_url) as s:
        save_personal_goals(s, cycle, employee, rows, actor=Actor.person(employee))

    found = problems_of(refused)
    assert set(found) == {
        "personal.1.title",
        "personal.1.measure",
        "personal.3.target",
        "personal.3.weight",
        "personal.3.deadline",
    }
    assert "2026-10-01 .. 2026-12-31" in found["personal.3.deadline"]
    assert sheet(db_url, cycle, employee).keys() == before.keys()


@pytest.mark.parametrize(
    ("rows", "field", "says"),
    [
        ([goal("Workshops", "4"), goal("Reopen rate", "1")], "personal.weight", "add up to 5%"),
        ([goal(f"Goal {n}", "1.5") for n in range(4)], "personal", "at most 3"),
    ],
)
def test_personal_goals_stay_within_the_policy_limits(
    db_url: str, cycle: int, rows: list[dict[str, str]], field: str, says: str
) -> None:
    employee, _ = first_report(db_url, cycle)

    with pytest.raises(InvalidInput) as refused, session_scope(db_url) as s:
        save_personal_goals(s, cycle, employee, rows, actor=Actor.person(employee))

    assert says in problems_of(refused)[field]
    assert not any(g.kind == "personal" for g in sheet(db_url, cycle, employee).values())


def test_only_the_employee_edits_and_only_before_signing(db_url: str, cycle: int) -> None:
    employee, manager = first_report(db_url, cycle)

    with pytest.raises(InvalidInput, match="only the employee"), session_scope(db_url) as s:
        save_personal_goals(
            s, cycle, employee, [goal("Workshops", "6")], actor=Actor.person(manager)
        )
    with session_scope(db_url) as s:
        submit_goals(s, cycle, employee, actor=Actor.person(employee))
    refused = pytest.raises(InvalidInput, match="submitted; they can change only before signing")
    with refused, session_scope(db_url) as s:
        set_target(s, cycle, employee, UNLOCKED, "80", actor=Actor.person(employee))


def test_an_unlocked_target_is_the_employees_to_propose_a_locked_one_is_not(
    db_url: str, cycle: int
) -> None:
    employee, manager = first_report(db_url, cycle)

    with pytest.raises(InvalidInput, match="locks this target"), session_scope(db_url) as s:
        set_target(s, cycle, employee, LOCKED, "80", actor=Actor.person(employee))
    with pytest.raises(InvalidInput, match="expected a number"), session_scope(db_url) as s:
        set_target(s, cycle, employee, UNLOCKED, "eighty", actor=Actor.person(employee))
    with session_scope(db_url) as s:
        set_target(s, cycle, employee, UNLOCKED, "80", actor=Actor.person(employee))
        assert agreed_targets(s, cycle).get(employee) is None  # not agreed yet
    with session_scope(db_url) as s:
        submit_goals(s, cycle, employee, actor=Actor.person(employee))
        approve_goals(s, cycle, employee, actor=Actor.person(manager))

    with session_scope(db_url) as s:
        assert agreed_targets(s, cycle)[employee] == {UNLOCKED: 80.0}
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "goals.target_set")
        ).one()
    assert (event.actor, event.before, event.after) == (
        employee,
        {"indicator": UNLOCKED, "target": 85.0},
        {"indicator": UNLOCKED, "target": 80.0},
    )


def test_a_policy_minimum_of_personal_goals_is_checked_when_signing(
    db_url: str, cycle: int
) -> None:
    employee, _ = first_report(db_url, cycle)
    with session_scope(db_url) as s:
        row = s.get_one(Cycle, cycle)
        snapshot: dict[str, Any] = dict(row.policy_snapshot)
        snapshot["personal_goals"] = {**snapshot["personal_goals"], "min": 1}
        row.policy_snapshot = snapshot

    with pytest.raises(InvalidInput, match="at least 1 personal goals"), session_scope(db_url) as s:
        submit_goals(s, cycle, employee, actor=Actor.person(employee))
    with session_scope(db_url) as s:
        save_personal_goals(
            s, cycle, employee, [goal("Workshops", "6")], actor=Actor.person(employee)
        )
    with session_scope(db_url) as s:
        submit_goals(s, cycle, employee, actor=Actor.person(employee))
    assert goal_states(db_url, cycle, employee) == {("submitted", True, False)}


# ---------------------------------------------------------------- portal


def test_the_employee_adds_goals_in_the_portal_and_the_manager_approves_them(
    db_url: str, cycle: int
) -> None:
    employee, manager = first_report(db_url, cycle)
    me = signed_in(db_url, employee, cycle, "goals", "target_setting:1")
    page = me.get(f"/goals?cycle={cycle}")
    assert page.status_code == 200
    assert t("goals.personal_title") in page.text
    assert 'name="personal.3.title"' in page.text  # three blank rows: no script needed
    assert f'name="target.{UNLOCKED}"' in page.text and f'name="target.{LOCKED}"' not in page.text

    form = {
        "csrf_token": csrf_of(page.text),
        "cycle": str(cycle),
        f"target.{UNLOCKED}": "88",
        **{f"personal.1.{k}": v for k, v in goal("Publish 10 FAQ articles", "6").items()},
    }
    bad = me.post("/goals/edit", data={**form, "personal.1.weight": "5"})
    assert bad.status_code == 422
    # Said in the employee's language (zh-CN), next to the form.
    assert t("problem.weights_sum", total="5", share="6") in bad.text
    assert t("goals.fix_errors") in bad.text
    assert 'value="Publish 10 FAQ articles"' in bad.text  # what was typed is kept
    assert sheet(db_url, cycle, employee)[UNLOCKED].target == 85.0  # all or nothing

    tampered = me.post("/goals/edit", data={**form, f"target.{LOCKED}": "50"})
    assert tampered.status_code == 422 and t("problem.locked") in tampered.text

    saved = me.post("/goals/edit", data=form)
    assert saved.status_code == 303
    goals = sheet(db_url, cycle, employee)
    assert goals[UNLOCKED].target == 88.0
    assert goals["personal-1"].title == "Publish 10 FAQ articles"
    assert goals["personal-1"].deadline is not None
    assert goals["personal-1"].deadline.isoformat() == "2026-12-15"

    page = me.get(f"/goals?cycle={cycle}")
    signed = me.post("/goals/submit", data={"csrf_token": csrf_of(page.text), "cycle": cycle})
    assert signed.status_code == 303
    page = me.get(f"/goals?cycle={cycle}")
    assert 'action="/goals/edit"' not in page.text  # signed: read-only until returned

    boss = signed_in(db_url, manager, cycle, "goals_approval", "target_setting:1")
    review = boss.get(f"/goals?cycle={cycle}")
    team = review.text.split(f'id="sheet-{employee}"')[1].split("</article>")[0]
    assert "Publish 10 FAQ articles" in team and "2026-12-15" in team and ">88<" in team
    approved = boss.post(
        "/goals/review",
        data={
            "csrf_token": csrf_of(review.text),
            "cycle": str(cycle),
            "employee": employee,
            "decision": "approve",
        },
    )
    assert approved.status_code == 303
    assert goal_states(db_url, cycle, employee) == {("agreed", True, True)}
