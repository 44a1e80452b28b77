"""A cycle's stored policy: read once per Cycle object, upgraded from older versions, tolerant of
keys a later release dropped, while policy files stay strict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain.models import Cycle, StageInstance, StageName
from perfcycle.domain.policy.loader import PolicyError, load_policy
from perfcycle.domain.policy.snapshot import (
    SNAPSHOT_VERSION,
    UPGRADES,
    cycle_policy,
    cycle_policy_or_none,
    read_snapshot,
    snapshot_of,
    upgrade,
)
from tests.support.cycle import launch, play_until_waiting_at, prepare_demo_org

FIXTURES = Path(__file__).parent / "fixtures"
POLICIES = REPO_ROOT / "policies"
# Keys added to the real dump that no release of the schema has: a later release dropped them.
DROPPED = ("legacy_bonus_pool", "grades.0.colour", "calibration.min_sample")


def v1_snapshot() -> dict[str, Any]:
    """external-service as a cycle launched before versioning stored it (dumped from such a
    launch), with three keys a later release dropped and reminder days in the file's order."""
    data: dict[str, Any] = json.loads((FIXTURES / "policy_snapshot_v1.json").read_text())
    return data


def shipped_snapshot() -> dict[str, Any]:
    return snapshot_of(load_policy(POLICIES / "external-service.yaml"))


def test_every_older_version_has_an_upgrade_to_the_next() -> None:
    assert sorted(UPGRADES) == list(range(1, SNAPSHOT_VERSION))


def test_version_1_reads_as_today_s_policy_with_reminder_days_furthest_first() -> None:
    stored = v1_snapshot()
    for key in DROPPED:
        assert _at(stored, key) is not None, key  # the fixture really has them

    policy = read_snapshot(stored, 1)

    assert policy.notifications.reminders.days_before == [3, 1]
    assert policy.notifications.reminder_days("evaluation") == [5, 3, 1]
    evaluation = policy.notifications.stages[StageName.evaluation].reminders
    assert evaluation is not None and evaluation.days_before == [5, 3, 1]
    assert policy.grade_ids() == ["A", "B", "C", "D", "E"]
    assert stored == v1_snapshot(), "reading must not change the stored dict"


def test_upgrading_version_1_changes_only_the_reminder_days() -> None:
    stored = v1_snapshot()
    upgraded = upgrade(stored, 1)

    assert upgraded["notifications"]["reminders"]["days_before"] == [3, 1]
    upgraded["notifications"]["reminders"]["days_before"] = [1, 3]
    upgraded["notifications"]["stages"]["evaluation"]["reminders"]["days_before"] = [1, 5, 3]
    assert upgraded == stored


def test_a_snapshot_from_a_newer_release_is_refused() -> None:
    with pytest.raises(InvalidInput, match=f"newer release .version {SNAPSHOT_VERSION + 1}"):
        read_snapshot(shipped_snapshot(), SNAPSHOT_VERSION + 1)


def test_a_policy_file_with_a_dropped_key_is_still_an_error_with_its_line(tmp_path: Path) -> None:
    text = (POLICIES / "external-service.yaml").read_text(encoding="utf-8")
    path = tmp_path / "typo.yaml"
    path.write_text(text + "legacy_bonus_pool: {share: 0.05}\n", encoding="utf-8")

    with pytest.raises(PolicyError) as err:
        load_policy(path)

    [problem] = err.value.problems
    assert problem.field == "legacy_bonus_pool"
    assert problem.line == len(text.splitlines()) + 1
    assert "unknown key 'legacy_bonus_pool'" in problem.message


def test_a_cycle_launched_under_version_1_keeps_running(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = prepare_demo_org(db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    scope = [org.department_of_type("external_service")]
    cycle_id = launch(db_url, "external-service", "2026-Q4", scope)
    with session_scope(db_url) as s:
        # As the release before versioning left it (migration 0008 marks such rows version 1).
        cycle = s.get_one(Cycle, cycle_id)
        cycle.policy_snapshot, cycle.snapshot_version = v1_snapshot(), 1

    # Target setting opens, everyone agrees, data collection runs, evaluation opens.
    status = play_until_waiting_at(db_url, cycle_id, "evaluation")

    assert (status.stage, status.next) == ("evaluation", "people")
    with session_scope(db_url) as s:
        rows = s.execute(select(StageInstance.name, StageInstance.state)).tuples()
        states = {name: state for name, state in rows}
        assert states == {
            "target_setting": "completed",
            "data_collection": "completed",
            "evaluation": "open",
        }
        cycle = s.get_one(Cycle, cycle_id)
        assert (cycle.snapshot_version, cycle.policy_snapshot) == (1, v1_snapshot())
        policy = cycle_policy(cycle)
        assert policy.notifications.reminders.days_before == [3, 1]
        assert policy.notifications.reminder_days("evaluation") == [5, 3, 1]


def test_a_launch_writes_today_s_version(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = prepare_demo_org(db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()

    cycle_id = launch(db_url, "external-service", "2026-Q4")

    with session_scope(db_url) as s:
        cycle = s.get_one(Cycle, cycle_id)
        assert cycle.snapshot_version == SNAPSHOT_VERSION
        assert cycle.policy_snapshot == shipped_snapshot()


def test_a_new_cycle_row_defaults_to_today_s_version() -> None:
    # models.py cannot import the policy package (it imports the models): keep the two in step.
    default = Cycle.__table__.c.snapshot_version.default
    assert default is not None and default.arg == SNAPSHOT_VERSION


# ---------------------------------------------------------------- one parse per Cycle object


def unsaved_cycle(snapshot: dict[str, Any], version: int = SNAPSHOT_VERSION) -> Cycle:
    return Cycle(
        id=7, policy="external-service", policy_snapshot=snapshot, snapshot_version=version
    )


def test_the_policy_is_parsed_once_per_cycle_object() -> None:
    cycle = unsaved_cycle(shipped_snapshot())

    assert cycle_policy(cycle) is cycle_policy(cycle)
    assert cycle_policy(unsaved_cycle(shipped_snapshot())) is not cycle_policy(cycle)


def test_a_new_snapshot_or_version_is_parsed_afresh() -> None:
    cycle = unsaved_cycle(shipped_snapshot())
    first = cycle_policy(cycle)

    edited = shipped_snapshot()
    edited["anonymity_threshold"] = 2
    cycle.policy_snapshot = edited
    assert cycle_policy(cycle).anonymity_threshold == 2

    cycle.policy_snapshot, cycle.snapshot_version = v1_snapshot(), 1
    assert cycle_policy(cycle).notifications.reminders.days_before == [3, 1]
    assert first.anonymity_threshold == 3


def test_a_cycle_without_a_policy_has_default_mail_but_no_policy() -> None:
    # Fixtures that exercise mail alone (the relay's tests and benchmark) store {}.
    cycle = unsaved_cycle({})

    assert cycle_policy_or_none(cycle) is None
    with pytest.raises(InvalidInput, match="cycle 7 has no policy"):
        cycle_policy(cycle)


def _at(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[int(part)] if isinstance(data, list) else data.get(part)
    return data
