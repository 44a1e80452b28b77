"""The real review-cycle flow under Prefect's test server, with real suspends and resumes.

The flow runs in this process from a deployment's flow run until it suspends; people act through
the domain; the run is resumed as the portal or the cycle clock would (`resume_reason` says
whether they would), or with the committee's run input; and it is run again, re-executing from
the top as a worker would, until the cycle is complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import Pause
from prefect.flow_engine import run_flow_sync
from prefect.flow_runs import resume_flow_run
from sqlalchemy import func, select, update

from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.devtools.demo import Player
from perfcycle.domain import engine
from perfcycle.domain.models import Base, CalibrationDecision, Cycle, StageInstance
from perfcycle.domain.status import cycle_status
from perfcycle.orchestration.client import run_info
from perfcycle.orchestration.review_cycle.flow import review_cycle
from tests.support.cycle import prepare_demo_org

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
PARAMETERS = {"policy": "external-service", "period": "2026-Q4"}
STAGES = ("target_setting", "data_collection", "evaluation", "calibration", "interview",
          "improvement", "appeal")


@pytest.fixture
def demo_db(db_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The demo organisation in the database the flow's tasks use (they read the settings)."""
    org = prepare_demo_org(db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_DATABASE_URL", db_url)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


def start_run() -> UUID:
    """A flow run of the deployment, as HR's "Custom run" creates it."""
    # Called outside an event loop, Prefect's dual sync/async methods return their result.
    deployment = review_cycle.to_deployment(name="launch")
    assert isinstance(deployment, RunnerDeployment)
    deployment_id = deployment.apply()
    assert isinstance(deployment_id, UUID)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters=PARAMETERS)
    return run.id


def read_run(run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def run_until_suspended(run_id: UUID) -> None:
    """Execute the flow run as a worker picks it up, until it suspends."""
    with pytest.raises(Pause):
        run_flow_sync(review_cycle, flow_run=read_run(run_id), parameters=PARAMETERS)
    assert run_info(str(run_id)).paused


def waiting_at(url: str, run_id: UUID) -> tuple[int, str | None, str | None]:
    """(cycle, its current stage, why the clock or portal would resume the run now)."""
    with session_scope(url) as session:
        cycle = session.scalars(select(Cycle).where(Cycle.flow_run_id == str(run_id))).one()
        return cycle.id, cycle.current_stage, engine.resume_reason(session, cycle)


def table_counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {name: session.scalar(select(func.count()).select_from(table)) or 0
                for name, table in Base.metadata.tables.items()}


def act(url: str, cycle_id: int) -> dict[str, Any] | None:
    """Everyone does the current stage's work; returns the committee's run input, if any."""
    with session_scope(url) as session:
        return Player(log=lambda _m: None).act(session, engine.get_cycle(session, cycle_id))


def resume(run_id: UUID, run_input: dict[str, Any] | None = None) -> None:
    """Resume as the portal, the clock or the committee's form does (it raises if refused)."""
    resume_flow_run(run_id, run_input=run_input)
    assert not run_info(str(run_id)).paused


def test_the_flow_suspends_resumes_and_completes_the_cycle(demo_db: str) -> None:
    url = demo_db
    run_id = start_run()

    # Target setting waits for people; nobody has acted, so nothing would resume the run.
    run_until_suspended(run_id)
    cycle_id, stage, reason = waiting_at(url, run_id)
    assert (stage, reason) == ("target_setting", None)
    act(url, cycle_id)
    assert waiting_at(url, run_id)[2] == "complete"
    resume(run_id)

    # Data collection waits for missing metrics; at its deadline (policy: advance) the clock
    # would resume the run and the stage closes with what it has.
    run_until_suspended(run_id)
    assert waiting_at(url, run_id)[1:] == ("data_collection", None)
    with session_scope(url) as session:
        session.execute(
            update(StageInstance)
            .where(StageInstance.cycle_id == cycle_id, StageInstance.name == "data_collection")
            .values(due_at=StageInstance.opened_at)
        )
    assert waiting_at(url, run_id)[2] == "deadline"
    resume(run_id)

    run_until_suspended(run_id)
    assert waiting_at(url, run_id)[1] == "evaluation"
    act(url, cycle_id)
    resume(run_id)

    # Calibration waits for the committee's run input; the clock never resumes it.
    run_until_suspended(run_id)
    assert waiting_at(url, run_id)[1:] == ("calibration", None)
    assert run_info(str(run_id)).waits_for_input
    send_back = act(url, cycle_id)
    assert send_back is not None and send_back["decision"] == "send_back"
    resume(run_id, run_input=send_back)

    # The flow records the decision from the run input; evaluation re-opens for who was sent back.
    run_until_suspended(run_id)
    assert waiting_at(url, run_id)[1] == "evaluation"
    act(url, cycle_id)
    resume(run_id)
    run_until_suspended(run_id)
    assert waiting_at(url, run_id)[1] == "calibration"
    approve = act(url, cycle_id)
    assert approve is not None and approve["decision"] == "approve"
    resume(run_id, run_input=approve)

    for stage in ("interview", "improvement", "appeal"):
        run_until_suspended(run_id)
        assert waiting_at(url, run_id)[1] == stage
        act(url, cycle_id)
        resume(run_id)
    run_flow_sync(review_cycle, flow_run=read_run(run_id), parameters=PARAMETERS)
    assert run_info(str(run_id)).state_type == "COMPLETED"

    with session_scope(url) as session:
        status = cycle_status(session, cycle_id)
        decisions = session.execute(
            select(CalibrationDecision.attempt, CalibrationDecision.decision)
            .where(CalibrationDecision.cycle_id == cycle_id)
            .order_by(CalibrationDecision.attempt)
        ).all()
    assert status["state"] == "completed"
    assert [s["name"] for s in status["stages"]] == list(STAGES)
    assert all(s["state"] == "completed" for s in status["stages"])
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["evaluation"]["attempt"] == 2 and stages["calibration"]["attempt"] == 2
    assert [tuple(d) for d in decisions] == [(1, "send_back"), (2, "approve")]

    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(flow_run_filter=run_filter)}
        task_runs = client.read_task_runs(flow_run_filter=run_filter)
    for stage in STAGES:
        assert f"cycle-{cycle_id}-{stage.replace('_', '-')}-entered" in keys
        assert f"cycle-{cycle_id}-{stage.replace('_', '-')}-closed" in keys
    assert f"cycle-{cycle_id}-results" in keys
    # Task runs are per stage step, never per employee (20 participants, 119 evaluations).
    assert {t.name.rsplit("-", 1)[0] for t in task_runs} <= {
        "open-cycle", "advance-stage", "record-calibration-decision", "finish-cycle"
    }
    assert len(task_runs) < 120

    # The same launch again is the same cycle: the new run ends at once and adds nothing.
    before = table_counts(url)
    again = start_run()
    assert run_flow_sync(review_cycle, flow_run=read_run(again), parameters=PARAMETERS) == {
        "cycle_id": cycle_id, "mode": "completed", "other_run": str(run_id)
    }
    assert table_counts(url) == before
