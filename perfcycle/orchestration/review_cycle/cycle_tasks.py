"""Opening and finishing a cycle."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain import cycles, engine
from perfcycle.domain.results import results_table
from perfcycle.orchestration.client import run_info


@dataclass(frozen=True)
class Opened:
    cycle_id: int
    # resumed: this run drives it; taken_over: the previous run died; driven_elsewhere: another
    # live run drives it.
    mode: Literal["new", "resumed", "taken_over", "driven_elsewhere", "completed"]
    other_run: str | None = None


@task(name="open-cycle", retries=0)
def open_cycle(policy: str, period: str, scope: list[str], start_date: date | None) -> Opened:
    logger = get_run_logger()
    me = str(flow_run.get_id() or "")
    request = cycles.LaunchRequest(policy, period, scope, start_date)
    with session_scope() as session:
        try:
            launch = cycles.validate_launch(session, request)
        except InvalidInput as exc:
            logger.error("Cannot launch the cycle:\n%s", exc)
            raise
        cycle, created = cycles.open_cycle(session, launch, me)
        if created:
            logger.info("Opened cycle %s (%s participants)", cycle.id, len(launch.employee_ids))
            return Opened(cycle.id, "new")
        if cycle.state == "completed":
            return Opened(cycle.id, "completed", cycle.flow_run_id)
        other = cycle.flow_run_id
        if other and other != me and not run_info(other).final:
            logger.info("Cycle %s is already being run by flow run %s", cycle.id, other)
            return Opened(cycle.id, "driven_elsewhere", other)
        mode: Literal["resumed", "taken_over"] = "resumed" if other == me else "taken_over"
        if other != me:
            cycles.adopt_cycle(session, cycle, me, previous=other)
        return Opened(cycle.id, mode, other)


@task(name="finish-cycle")
def finish_cycle(cycle_id: int) -> int:
    with session_scope() as session:
        cycle = engine.get_cycle(session, cycle_id)
        engine.finish_cycle(session, cycle)
        rows = results_table(session, cycle_id)
    create_table_artifact(
        key=f"cycle-{cycle_id}-results",
        table=[{"employee_id": r["employee_id"], "total": round(r["total"], 1),
                "grade": r["grade"]} for r in rows],
        description=f"Cycle {cycle_id}: final results",
    )
    return len(rows)
