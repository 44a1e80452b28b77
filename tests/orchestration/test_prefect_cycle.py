"""The whole cycle against a real Prefect server, with the deployments served as in `perfcycle up`.

Launch from the deployment, suspend, resume through portal submissions, the cycle clock and
`resume_flow_run(run_input=...)`, complete; launch the same cycle again and show nothing was
duplicated. Bad launch parameters fail the run at once and create no cycle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import func, select, update

from perfcycle.core import migrate
from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.devtools.demo import Player
from perfcycle.devtools.demo_data import generate_tickets, sample_org, write_org_csv
from perfcycle.devtools.devstack import Stack
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.cycles import parse_period
from perfcycle.domain.models import Base, Cycle, RaterAssignment, StageInstance
from perfcycle.domain.org import import_org_csv
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import submit_evaluation
from perfcycle.domain.status import cycle_status
from perfcycle.orchestration.client import CLOCK_DEPLOYMENT, launch, run_info
from tests.support.cycle import agree_goals_but_one, full_answers
from tests.support.portal import csrf_of, form_of, signed_in

pytestmark = pytest.mark.prefect
POLICY, PERIOD = "external-service", "2026-Q4"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    saved = dict(os.environ)
    db_url = f"sqlite:///{home}/perfcycle.db"
    os.environ.update({
        "PERFCYCLE_HOME": str(home),
        "PERFCYCLE_DATABASE_URL": db_url,
        "PERFCYCLE_TICKETS_URL": f"sqlite:///{home}/tickets.db",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    })
    get_settings.cache_clear()
    migrate.upgrade(db_url)
    rows = sample_org()
    write_org_csv(rows, home / "org.csv")
    with session_scope() as session:
        import_org_csv(session, home / "org.csv")
    generate_tickets(os.environ["PERFCYCLE_TICKETS_URL"], rows, *parse_period(PERIOD))
    with Stack(home=home, free_ports=True, database_url=db_url) as running, \
            temporary_settings({PREFECT_API_URL: running.env["PREFECT_API_URL"]}):
        yield running
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def paused_at(run_id: str, stage: str) -> None:
    """Wait until the run is suspended and the cycle's current stage is `stage`."""

    def check() -> bool:
        info = run_info(run_id)
        assert not (info.final and info.state_type != "COMPLETED"), f"run ended {info}"
        if not info.paused:
            return False
        with session_scope() as session:
            cycle = session.scalar(select(Cycle).where(Cycle.flow_run_id == run_id))
            return cycle is not None and cycle.current_stage == stage

    wait_for(f"run {run_id} to suspend at {stage}", check)


def cycle_of(run_id: str) -> int:
    with session_scope() as session:
        cycle_id = session.scalar(select(Cycle.id).where(Cycle.flow_run_id == run_id))
    assert cycle_id is not None
    return cycle_id


def act(cycle_id: int) -> dict[str, Any] | None:
    with session_scope() as session:
        return Player(log=lambda _m: None).act(session, engine.get_cycle(session, cycle_id))


def run_to_end(name: str, parameters: dict[str, Any] | None = None) -> FlowRun:
    """A run of the deployment, waited for up to two minutes."""
    run = run_deployment(name, parameters=parameters, timeout=120)
    assert isinstance(run, FlowRun)  # called outside an event loop, it is the run itself
    return run


def run_clock() -> None:
    run = run_to_end(CLOCK_DEPLOYMENT)
    assert run.state is not None and run.state.is_completed(), run.state


def table_counts() -> dict[str, int]:
    with session_scope() as session:
        return {name: session.scalar(select(func.count()).select_from(table)) or 0
                for name, table in Base.metadata.tables.items()}


def portal_signed_in(stack: Stack, person: str, cycle_id: int, kind: str, ref: str) -> Any:
    # The portal resumes runs from its own threads: they read Prefect's API URL from the env.
    os.environ["PREFECT_API_URL"] = stack.env["PREFECT_API_URL"]
    return signed_in(stack.database_url, person, cycle_id, kind, ref)


def approve_last_goals_in_the_portal(stack: Stack, cycle_id: int) -> None:
    with session_scope() as session:
        last, manager = agree_goals_but_one(session, cycle_id)
    boss = portal_signed_in(stack, manager, cycle_id, "goals_approval", "target_setting:1")
    page = boss.get(f"/goals?cycle={cycle_id}")
    assert f'id="sheet-{last}"' in page.text
    approved = boss.post("/goals/review", data={
        "csrf_token": csrf_of(page.text), "cycle": str(cycle_id), "employee": last,
        "decision": "approve"})
    assert approved.status_code == 303, approved.text
    paused_at(run_info_id(cycle_id), "data_collection")


def submit_last_evaluation_in_the_portal(stack: Stack, cycle_id: int) -> None:
    with session_scope() as session:
        *others, last = session.scalars(
            select(RaterAssignment)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
            .order_by(RaterAssignment.id)
        ).all()
        policy = cycle_policy(engine.get_cycle(session, cycle_id))
        for a in others:
            submit_evaluation(
                session, a.id, full_answers(session, a), Actor.person(a.rater_id), policy
            )
        answers = full_answers(session, last)
        last_id, rater = last.id, last.rater_id
    client = portal_signed_in(stack, rater, cycle_id, "evaluation", "evaluation:1")
    token = csrf_of(client.get(f"/evaluations/{last_id}").text)
    submitted = client.post(f"/evaluations/{last_id}", data=form_of(dict(answers), token))
    assert submitted.status_code == 303, submitted.text
    paused_at(run_info_id(cycle_id), "calibration")


def run_info_id(cycle_id: int) -> str:
    with session_scope() as session:
        run_id = session.get_one(Cycle, cycle_id).flow_run_id
    assert run_id is not None
    return run_id


def test_whole_cycle_through_prefect(stack: Stack) -> None:
    run_id = launch(POLICY, PERIOD, [], None)

    # Target setting waits for people; the manager's approval of the last sheet, in the portal,
    # resumes the run (no clock run in between).
    paused_at(run_id, "target_setting")
    cycle_id = cycle_of(run_id)
    run_clock()
    assert run_info(run_id).paused, "the clock must not resume a stage that is neither done nor due"
    approve_last_goals_in_the_portal(stack, cycle_id)

    # Data collection: heads of department have no tickets, so it waits; at its deadline
    # (policy: advance) the clock resumes the run and the stage closes with what it has.
    paused_at(run_id, "data_collection")
    run_clock()
    assert run_info(run_id).paused, "data is still missing and the deadline is days away"
    with session_scope() as session:
        session.execute(update(StageInstance)
                        .where(StageInstance.cycle_id == cycle_id,
                               StageInstance.name == "data_collection")
                        .values(due_at=StageInstance.opened_at))
    run_clock()
    # Evaluation: the last rater's submission in the portal resumes the run.
    paused_at(run_id, "evaluation")
    submit_last_evaluation_in_the_portal(stack, cycle_id)

    # Calibration waits for the committee's run input; the clock never resumes it.
    paused_at(run_id, "calibration")
    assert run_info(run_id).waits_for_input
    run_clock()
    assert run_info(run_id).paused
    send_back = act(cycle_id)
    assert send_back is not None and send_back["decision"] == "send_back"
    resume_flow_run(UUID(run_id), run_input=send_back)

    paused_at(run_id, "evaluation")  # re-evaluation for the employee sent back
    act(cycle_id)
    assert run_info(run_id).paused
    run_clock()  # a stage done without the portal: the clock sees it complete and resumes
    paused_at(run_id, "calibration")
    approve = act(cycle_id)
    assert approve is not None and approve["decision"] == "approve"
    resume_flow_run(UUID(run_id), run_input=approve)

    for stage in ("interview", "improvement", "appeal"):
        paused_at(run_id, stage)
        act(cycle_id)
        run_clock()
    wait_for("the run to complete", lambda: run_info(run_id).state_type == "COMPLETED")

    with session_scope() as session:
        status = cycle_status(session, cycle_id)
    assert status["state"] == "completed"
    assert [s["name"] for s in status["stages"]] == [
        "target_setting", "data_collection", "evaluation", "calibration", "interview",
        "improvement", "appeal"]
    assert all(s["state"] == "completed" for s in status["stages"])
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["evaluation"]["attempt"] == 2 and stages["calibration"]["attempt"] == 2

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
    keys = {a.key for a in artifacts}
    for stage in ("target-setting", "data-collection", "evaluation", "calibration",
                  "interview", "improvement", "appeal"):
        assert f"cycle-{cycle_id}-{stage}-entered" in keys
        assert f"cycle-{cycle_id}-{stage}-closed" in keys
    assert f"cycle-{cycle_id}-results" in keys
    # Task runs are per stage step, never per employee (20 participants, 119 evaluations).
    assert len(task_runs) < 120

    # The same launch again is the same cycle: the new run ends at once and adds nothing.
    before = table_counts()
    again = launch(POLICY, PERIOD, [], None)
    wait_for("the second run to finish", lambda: run_info(again).final)
    assert run_info(again).state_type == "COMPLETED"
    assert table_counts() == before
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Cycle)
                              .where(Cycle.policy == POLICY)) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"policy": POLICY, "period": "2026-Q5"}, "'2026-Q5' is not a period"),
        ({"policy": POLICY, "period": "2026-Q4", "scope": ["NOPE"]},
         "unknown department 'NOPE'"),
        ({"policy": POLICY, "period": "2026-Q4", "scope": ["FIN"]},
         "department 'FIN' is professional_support"),
    ],
)
@pytest.mark.usefixtures("stack")
def test_bad_launch_fails_the_run_and_creates_nothing(params: dict[str, Any], message: str) -> None:
    before = table_counts()
    run = run_to_end("review-cycle/launch", params)
    assert run.state is not None and run.state.is_failed(), run.state
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert any(message in log.message for log in logs), [log.message for log in logs]
    assert table_counts()["cycles"] == before["cycles"]


@pytest.mark.usefixtures("stack")
def test_unknown_policy_is_refused() -> None:
    """The UI offers a dropdown; through the API an unknown name is refused outright."""
    before = table_counts()
    try:
        run = run_to_end("review-cycle/launch", {"policy": "no-such-policy", "period": PERIOD})
    except Exception as exc:  # the server rejects parameters outside the schema's enum
        assert "no-such-policy" in str(exc) or "enum" in str(exc).lower()
    else:
        assert run.state is not None and run.state.is_failed(), run.state
    assert table_counts()["cycles"] == before["cycles"]


def test_paths_are_absolute(stack: Stack) -> None:
    assert Path(stack.database_url.split("///", 1)[1]).is_absolute()
