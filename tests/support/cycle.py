"""Drive a cycle through the engine's `advance` without Prefect, as the review-cycle flow does.

Logic tests use this to run whole cycles in milliseconds; the Prefect tests prove the flow
itself does the same thing against a real server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core.db import session_scope
from perfcycle.devtools.demo import Player
from perfcycle.devtools.demo_data import generate_tickets, sample_org, write_org_csv
from perfcycle.domain import cycles, engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import Base, Cycle, Participant, RaterAssignment
from perfcycle.domain.org import import_org_csv
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.calibration import DecisionInput, apply_decision
from perfcycle.domain.stages.evaluation import assignment_items
from perfcycle.domain.stages.target_setting import approve_goals, submit_goals


def launch(url: str, policy: str, period: str, scope: list[str] | None = None,
           run_id: str = "run-1") -> int:
    with session_scope(url) as session:
        valid = cycles.validate_launch(session, cycles.LaunchRequest(policy, period, scope or []))
        cycle, _ = cycles.open_cycle(session, valid, run_id)
        return cycle.id


def full_answers(
    session: Session, assignment: RaterAssignment, score: int = 4, comment: str = ""
) -> dict[str, tuple[int, str]]:
    """One answer per item of the assignment's form, its ratee's personal goals included."""
    policy = cycle_policy(engine.get_cycle(session, assignment.cycle_id))
    items = assignment_items(
        session, policy, assignment.cycle_id, assignment.ratee_id, assignment.rater_type
    )
    return {i.id: (score, comment) for i in items}


def agree_goals_but_one(session: Session, cycle_id: int) -> tuple[str, str]:
    """Everyone signs their goals and all but one sheet is agreed: the first participant with a
    manager waits for that manager. Returns (employee, manager)."""
    rows = session.execute(
        select(Participant.employee_id, Participant.manager_id)
        .where(Participant.cycle_id == cycle_id)
        .order_by(Participant.employee_id)
    ).all()
    last, manager = next((e, str(m)) for e, m in rows if m)
    for employee_id, manager_id in rows:
        submit_goals(session, cycle_id, employee_id, actor=Actor.person(employee_id))
        if employee_id != last:
            approver = Actor.person(manager_id) if manager_id else Actor.hr("hr-admin")
            approve_goals(session, cycle_id, employee_id, actor=approver)
    return last, manager


def run_until_wait(url: str, cycle_id: int) -> engine.Step:
    """One flow run without Prefect: advance until the cycle waits or is finished."""
    for _ in range(100):
        step = engine.advance(cycle_id, url)
        if step.next != "continue":
            return step
    raise AssertionError("cycle did not converge")


def decide(url: str, cycle_id: int, **decision: Any) -> None:
    with session_scope(url) as session:
        cycle = engine.get_cycle(session, cycle_id)
        inst = engine.stage_instances(session, cycle_id)["calibration"]
        apply_decision(session, cycle, cycle_policy(cycle), inst,
                       DecisionInput.model_validate(decision))


@dataclass
class Outcome:
    waits: list[str]


def play_whole_cycle(url: str, cycle_id: int, player: Player | None = None) -> Outcome:
    """Run, act for everyone whenever the cycle waits, approve calibration; until finished."""
    player = player or Player(log=lambda _m: None)
    waits: list[str] = []
    for _ in range(50):
        step = run_until_wait(url, cycle_id)
        if step.next == "finished":
            return Outcome(waits)
        waits.append(f"{step.stage}:{step.next}")
        with session_scope(url) as session:
            cycle = session.scalar(select(Cycle).where(Cycle.id == cycle_id))
            assert cycle is not None
            run_input = player.act(session, cycle)
        if run_input is not None:
            decide(url, cycle_id, **run_input)
    raise AssertionError(f"cycle did not finish; waits: {waits}")


# ---------------------------------------------------------------- scenario helpers


@dataclass(frozen=True)
class DemoOrg:
    """The demo organisation in a database, and the ticket system its metrics come from."""

    url: str
    tickets_url: str
    org_csv: Path
    rows: list[dict[str, str]]

    def department_of_type(self, department_type: str) -> str:
        return next(
            r["department_id"] for r in self.rows if r["department_type"] == department_type
        )


def prepare_demo_org(url: str, folder: Path, period: str = "2026-Q4") -> DemoOrg:
    """Import the sample org into `url` and generate its tickets in `folder` (the caller points
    PERFCYCLE_TICKETS_URL at `tickets_url`, since the policies read it from the environment)."""
    rows = sample_org()
    org_csv = write_org_csv(rows, folder / "org.csv")
    with session_scope(url) as session:
        import_org_csv(session, org_csv, actor="hr-admin")
    tickets_url = f"sqlite:///{folder / 'tickets.db'}"
    start, end = cycles.parse_period(period)
    generate_tickets(tickets_url, rows, start, end)
    return DemoOrg(url, tickets_url, org_csv, rows)


class InjectedCrash(Exception):
    """Raised by a test's fault injection: stands for any failure that fails the flow run."""


def play_whole_cycle_surviving(
    url: str, cycle_id: int, player: Player | None = None
) -> tuple[Outcome, int]:
    """play_whole_cycle where a run that dies of InjectedCrash is simply run again, as Prefect's
    retry (or HR re-launching the deployment) would. Returns the outcome and the crash count."""
    player = player or Player(log=lambda _m: None)
    waits: list[str] = []
    crashes = 0
    for _ in range(60):
        try:
            step = run_until_wait(url, cycle_id)
        except InjectedCrash:
            crashes += 1
            continue
        if step.next == "finished":
            return Outcome(waits), crashes
        waits.append(f"{step.stage}:{step.next}")
        act(url, cycle_id, player)
    raise AssertionError(f"cycle did not finish; waits: {waits}, crashes: {crashes}")


def table_rows(url: str, exclude: frozenset[str] = frozenset()) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (in primary-key order), for before/after comparisons."""
    with session_scope(url) as session:
        return {
            table.name: [
                dict(row._mapping)
                for row in session.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in Base.metadata.sorted_tables
            if table.name not in exclude
        }


def act(url: str, cycle_id: int, player: Player | None = None) -> dict[str, Any] | None:
    """Everyone does the current stage's work; the committee's decision is recorded too."""
    player = player or Player(log=lambda _m: None)
    with session_scope(url) as session:
        run_input = player.act(session, engine.get_cycle(session, cycle_id))
    if run_input is not None:
        decide(url, cycle_id, **run_input)
    return run_input


def play_until_waiting_at(
    url: str, cycle_id: int, stage: str, player: Player | None = None
) -> engine.Step:
    """Run and act for everyone until the cycle waits at `stage`; nobody has acted there yet."""
    for _ in range(30):
        step = run_until_wait(url, cycle_id)
        if step.stage == stage:
            return step
        if step.next == "finished":
            break
        act(url, cycle_id, player)
    raise AssertionError(f"cycle {cycle_id} never waited at {stage}")
