"""Read models for operators and scripts: cycle list and status, in the shapes the CLI prints."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.domain import engine
from perfcycle.domain.models import Cycle
from perfcycle.domain.policy.snapshot import cycle_policy


def cycle_list(session: Session) -> list[dict[str, Any]]:
    """Newest first."""
    cycles = session.scalars(select(Cycle).order_by(Cycle.created_at.desc(), Cycle.id.desc()))
    return [
        {
            "id": c.id,
            "policy": c.policy,
            "period": c.period,
            "state": c.state,
            "scope": c.scope_key.split(",") if c.scope_key else [],
            "current_stage": c.current_stage,
            "flow_run_id": c.flow_run_id,
        }
        for c in cycles
    ]


def cycle_status(session: Session, cycle_id: int) -> dict[str, Any]:
    cycle = engine.get_cycle(session, cycle_id)
    policy = cycle_policy(cycle)
    instances = engine.stage_instances(session, cycle_id)
    stages = []
    for stage in policy.stages:
        inst = instances.get(stage.name)
        if inst is None:
            stages.append(
                {"name": stage.name, "state": "pending", "due_at": None, "done": 0, "total": 0}
            )
            continue
        progress = engine.stage_progress(session, cycle, policy, inst)
        stages.append(
            {
                "name": stage.name,
                "state": inst.state,
                "due_at": inst.due_at.isoformat(),
                "done": progress.done,
                "total": progress.total,
                "attempt": inst.attempt,
            }
        )
    return {
        "id": cycle.id,
        "policy": cycle.policy,
        "period": cycle.period,
        "state": cycle.state,
        "current_stage": cycle.current_stage,
        "flow_run_id": cycle.flow_run_id,
        "stages": stages,
    }
