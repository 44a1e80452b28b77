"""The access model (perfcycle.domain.access): actors, their audit names, and the rules that do
not need a database. The rules against a cycle are exercised through the stage services
(tests/domain/stages) and the portal (tests/web)."""

from __future__ import annotations

import pytest

from perfcycle.core.errors import InvalidInput, NotAllowed, Problem
from perfcycle.domain import access
from perfcycle.domain.access import Actor, Refusal
from perfcycle.domain.models import Appeal, ImprovementPlan, Interview, RaterAssignment


def test_actors_keep_the_audit_names_the_log_always_had() -> None:
    assert Actor.person("E0001").name == "E0001"
    assert Actor.person("E0001", ["hr_admin"]).name == "E0001"  # a portal HR admin: their id
    assert Actor.hr().name == "hr"  # the CLI's default --actor
    assert Actor.hr("hr-alice").name == "hr-alice"
    assert Actor.system().name == "system"
    assert Actor.named("supervision-chair", "supervision").name == "supervision-chair"


def test_hr_is_a_role_whoever_holds_it() -> None:
    assert Actor.hr().is_hr and Actor.hr("hr-alice").is_hr
    assert Actor.person("E0001", ["hr_admin", "employee"]).is_hr
    # A name no longer makes HR: an employee id starting with "hr" is just a person.
    assert not Actor.person("hr-lookalike").is_hr
    assert not Actor.system().is_hr


def test_no_person_is_never_anyone() -> None:
    assert not Actor.hr().is_(None)
    assert not Actor.hr().is_("hr")
    assert Actor.person("e1").is_("e1")


def test_hr_follows_up_a_plan_without_owner_and_only_that() -> None:
    ownerless = ImprovementPlan(owner_id=None, employee_id="e1", state="open")
    owned = ImprovementPlan(owner_id="m1", employee_id="e2", state="open")
    hr = Actor.person("h1", ["hr_admin"])
    assert access.plan_party_refusal(hr, ownerless) is None
    assert access.plan_owner_refusal(hr, ownerless) is None
    assert access.plan_party_refusal(Actor.person("e1"), ownerless) is None
    refused = access.plan_party_refusal(hr, owned)
    assert refused is not None and "owner or the employee (e2, m1)" in refused.message
    assert access.plan_owner_refusal(Actor.person("e2"), owned) is not None
    assert access.plan_owner_refusal(Actor.person("m1"), owned) is None


def test_each_record_has_its_own_people() -> None:
    interview = Interview(employee_id="e1", manager_id="m1")
    assert access.interview_recorder_refusal(Actor.person("m1"), interview) is None
    assert access.interview_recorder_refusal(Actor.person("e1"), interview) is not None
    assert access.interview_acknowledger_refusal(Actor.person("e1"), interview) is None
    assert access.interview_acknowledger_refusal(Actor.person("m1"), interview) is not None
    appeal = Appeal(employee_id="e1")
    assert access.appellant_refusal(Actor.person("e1"), appeal) is None
    assert access.appellant_refusal(Actor.hr(), appeal) is not None
    form = RaterAssignment(rater_id="r1", ratee_id="e1")
    assert access.evaluation_refusal(Actor.person("r1"), form) is None
    assert access.evaluation_refusal(Actor.hr("hr-clerk"), form) is None  # paper forms
    assert access.evaluation_refusal(Actor.person("e1"), form) is not None


def test_a_refusal_among_the_problems_makes_it_not_allowed() -> None:
    access.raise_problems([])
    with pytest.raises(InvalidInput) as bad:
        access.raise_problems([Problem("a reason is required", field="reason")])
    assert not isinstance(bad.value, NotAllowed)
    with pytest.raises(NotAllowed) as refused:
        access.raise_problems(
            [Refusal("not yours", field="actor"), Problem("a reason is required", field="reason")]
        )
    assert [p.field for p in refused.value.problems] == ["actor", "reason"]
