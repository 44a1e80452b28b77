"""engine.advance, the stage loop's one step: what it reports and what the next step needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfcycle.core.settings import get_settings
from perfcycle.domain import engine
from tests.support.cycle import act, launch, prepare_demo_org


@pytest.fixture
def cycle_id(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    org = prepare_demo_org(db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    return launch(db_url, "external-service", "2026-Q4")


def test_a_waiting_stage_gets_a_new_suspend_key_per_wait_and_is_entered_once(
    db_url: str, cycle_id: int
) -> None:
    first = engine.advance(cycle_id, db_url)
    assert (first.stage, first.next, first.closed) == ("target_setting", "people", None)
    assert first.entered is not None and first.entered["goals_created"] > 0
    assert first.key == engine.suspend_key("target_setting", 1, 1)
    assert first.timeout_s > 0 and (first.done, first.total) == (0, 20)

    again = engine.advance(cycle_id, db_url)  # a resumed run with nothing done meanwhile
    assert (again.stage, again.next) == ("target_setting", "people")
    assert again.entered == {"goals_created": 0, "mails_enqueued": 0}
    assert again.key == engine.suspend_key("target_setting", 1, 2)


def test_a_complete_stage_is_closed_and_the_loop_continues_with_the_next(
    db_url: str, cycle_id: int
) -> None:
    engine.advance(cycle_id, db_url)
    act(db_url, cycle_id)

    closed = engine.advance(cycle_id, db_url)
    assert (closed.stage, closed.next, closed.key) == ("target_setting", "continue", "")
    assert closed.closed is not None and closed.closed["goals_defaulted"] == 0
    assert (closed.done, closed.total) == (20, 20)

    following = engine.advance(cycle_id, db_url)
    assert following.stage == "data_collection"
    assert following.entered is not None and "metric_values" in following.entered
