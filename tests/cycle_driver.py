"""Drive a cycle through the engine without Prefect, exactly as flows/review_cycle.py does.

Logic tests use this to run whole cycles in milliseconds; the Prefect tests prove the flow
itself does the same thing against a real server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from perfcycle import cycles, engine
from perfcycle.db import session_scope
from perfcycle.demo import Player
from perfcycle.models import Cycle
from perfcycle.stages.calibration import DecisionInput, apply_decision


def launch(url: str, policy: str, period: str, scope: list[str] | None = None,
           run_id: str = "run-1") -> int:
    with session_scope(url) as session:
        valid = cycles.validate_launch(session, cycles.LaunchRequest(policy, period, scope or []))
        cycle, _ = cycles.open_cycle(session, valid, run_id)
        return cycle.id


def run_until_wait(url: str, cycle_id: int) -> engine.StageStatus:
    """One flow run: step stages until one must wait; 'finished' when the cycle is done."""
    for _ in range(100):
        with session_scope(url) as session:
            cycle = engine.get_cycle(session, cycle_id)
            policy = engine.cycle_policy(cycle)
            stage = engine.current_stage(session, cycle, policy)
            if stage is None:
                engine.finish_cycle(session, cycle)
                return engine.StageStatus(cycle_id, None, "finished")
            inst = engine.open_stage(session, cycle, policy, stage)
        with session_scope(url) as session:
            cycle = engine.get_cycle(session, cycle_id)
            engine.enter_stage(session, cycle, policy, engine.stage_instances(session, cycle_id)[stage.name])
        with session_scope(url) as session:
            cycle = engine.get_cycle(session, cycle_id)
            inst = engine.stage_instances(session, cycle_id)[stage.name]
            status = engine.assess(session, cycle, policy, inst)
        if status.wait != "ready":
            return status
        with session_scope(url) as session:
            cycle = engine.get_cycle(session, cycle_id)
            engine.close_stage(session, cycle, policy, engine.stage_instances(session, cycle_id)[stage.name])
    raise AssertionError("cycle did not converge")


def decide(url: str, cycle_id: int, **decision: Any) -> None:
    with session_scope(url) as session:
        cycle = engine.get_cycle(session, cycle_id)
        inst = engine.stage_instances(session, cycle_id)["calibration"]
        apply_decision(session, cycle, engine.cycle_policy(cycle), inst,
                       DecisionInput.model_validate(decision))


@dataclass
class Outcome:
    waits: list[str]


def play_whole_cycle(url: str, cycle_id: int, player: Player | None = None) -> Outcome:
    """Run, act for everyone whenever the cycle waits, approve calibration; until finished."""
    player = player or Player(log=lambda _m: None)
    waits: list[str] = []
    for _ in range(50):
        status = run_until_wait(url, cycle_id)
        if status.wait == "finished":
            return Outcome(waits)
        waits.append(f"{status.stage}:{status.wait}")
        with session_scope(url) as session:
            cycle = session.scalar(select(Cycle).where(Cycle.id == cycle_id))
            assert cycle is not None
            run_input = player.act(session, cycle)
        if run_input is not None:
            decide(url, cycle_id, **run_input)
    raise AssertionError(f"cycle did not finish; waits: {waits}")
