"""`perfcycle demo`: a whole quarter's review, end to end, on a sample organisation.

It brings up the local stack, loads ~40 people in three departments, generates their ticket
data, launches one cycle per department type through the review-cycle/launch deployment, then
plays every participant through the same service functions the portal calls, approves
calibration through Prefect's run input, and prints the results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.domain import engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import Cycle, MetricValue
from perfcycle.domain.policy.snapshot import cycle_policy

# The demo's HR administrator: supplies metrics and stands in for absent managers.
HR = Actor.hr("hr-admin")


def _manager_or_hr(manager_id: str | None) -> Actor:
    return Actor.person(manager_id) if manager_id else HR


POLICIES = ["external-service", "internal-service", "professional-support"]


@dataclass
class Player:
    """Acts for every person in a cycle, stage by stage, as they would in the portal."""

    log: Callable[[str], None] = print
    decisions: dict[int, int] = field(default_factory=dict)

    def act(self, session: Session, cycle: Cycle) -> dict[str, Any] | None:
        """Do the current stage's work. Returns run input if the committee must decide."""
        stage = cycle.current_stage
        if stage == "target_setting":
            self._goals(session, cycle)
        elif stage == "data_collection":
            self._supply_missing_metrics(session, cycle)
        elif stage == "evaluation":
            self._evaluate(session, cycle)
        elif stage == "calibration":
            return self._calibrate(session, cycle)
        elif stage == "interview":
            self._interviews(session, cycle)
        elif stage == "improvement":
            self._plans(session, cycle)
        elif stage == "appeal":
            self._appeals(session, cycle)
        return None

    def _goals(self, session: Session, cycle: Cycle) -> None:
        from perfcycle.domain.models import Goal, Participant
        from perfcycle.domain.stages.target_setting import (
            approve_goals,
            save_personal_goals,
            submit_goals,
        )

        share = cycle_policy(cycle).personal_goals

        pending = session.execute(
            select(Participant.employee_id, Participant.manager_id).where(
                Participant.cycle_id == cycle.id,
                Participant.employee_id.in_(
                    select(Goal.employee_id).where(
                        Goal.cycle_id == cycle.id, Goal.state != "agreed"
                    )
                ),
            )
        )
        n = with_personal = 0
        for employee_id, manager_id in pending.all():
            states = set(
                session.scalars(
                    select(Goal.state).where(
                        Goal.cycle_id == cycle.id, Goal.employee_id == employee_id
                    )
                )
            )
            # Every third person adds a personal SMART goal, so the demo shows them scored.
            if share.max and states == {"proposed"} and zlib.crc32(employee_id.encode()) % 3 == 0:
                goal = {
                    "title": "Publish five FAQ articles from recurring tickets",
                    "measure": "articles published in the knowledge base",
                    "target": "5",
                    "deadline": cycle.period_end.isoformat(),
                    "weight": f"{share.weight:g}",
                }
                save_personal_goals(
                    session, cycle.id, employee_id, [goal], actor=Actor.person(employee_id)
                )
                with_personal += 1
            if states != {"submitted"}:
                submit_goals(session, cycle.id, employee_id, actor=Actor.person(employee_id))
            approve_goals(session, cycle.id, employee_id, actor=_manager_or_hr(manager_id))
            n += 1
        self.log(
            f"  cycle {cycle.id}: {n} employees signed their goals with their managers "
            f"({with_personal} added a personal goal)"
        )

    def _supply_missing_metrics(self, session: Session, cycle: Cycle) -> None:
        """Heads of department handle no tickets: HR supplies their team's average by CSV."""
        import csv
        import tempfile
        from statistics import mean

        from perfcycle.domain.models import Participant
        from perfcycle.domain.policy.schema import MetricIndicator, VetoIndicator
        from perfcycle.domain.stages.data_collection import import_metrics_csv

        policy = cycle_policy(cycle)
        needed = sorted(
            {i.metric for i in policy.indicators if isinstance(i, MetricIndicator)}
            | {i.trigger.metric for i in policy.indicators if isinstance(i, VetoIndicator)}
        )
        veto_metrics = {i.trigger.metric for i in policy.indicators
                         if isinstance(i, VetoIndicator)}
        managers: dict[str, str | None] = dict(
            session.execute(
                select(Participant.employee_id, Participant.manager_id).where(
                    Participant.cycle_id == cycle.id
                )
            ).tuples().all()
        )
        values: dict[tuple[str, str], float] = {
            (e, m): v
            for e, m, v in session.execute(
                select(MetricValue.employee_id, MetricValue.metric, MetricValue.value).where(
                    MetricValue.cycle_id == cycle.id
                )
            )
        }
        missing = [(e, m) for e in managers for m in needed if (e, m) not in values]
        if not missing:
            return
        rows = []
        for employee, metric in missing:
            team = [
                values[(r, metric)]
                for r, mgr in managers.items()
                if mgr == employee and (r, metric) in values
            ]
            pool = team or [v for (_, m), v in values.items() if m == metric] or [0.0]
            if metric in veto_metrics:
                pool = [0.0]  # incidents are attributed to whoever handled them, not averaged
            rows.append(
                {
                    "employee_id": employee,
                    "metric": metric,
                    "value": round(mean(pool), 2),
                    "evidence": '{"basis": "team average supplied by HR"}',
                }
            )
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["employee_id", "metric", "value", "evidence"])
            writer.writeheader()
            writer.writerows(rows)
        try:
            import_metrics_csv(session, cycle, policy, Path(f.name), HR)
        finally:
            Path(f.name).unlink()
        self.log(
            f"  cycle {cycle.id}: HR supplied {len(rows)} missing metric values "
            "(team averages for heads of department)"
        )

    def _evaluate(self, session: Session, cycle: Cycle) -> None:
        from perfcycle.domain.models import RaterAssignment
        from perfcycle.domain.stages.evaluation import assignment_items, submit_evaluation

        policy = cycle_policy(cycle)
        satisfaction: dict[str, float] = dict(
            session.execute(
                select(MetricValue.employee_id, MetricValue.value).where(
                    MetricValue.cycle_id == cycle.id, MetricValue.metric == "satisfaction_pct"
                )
            ).tuples().all()
        )
        pending = session.scalars(
            select(RaterAssignment).where(
                RaterAssignment.cycle_id == cycle.id, RaterAssignment.state == "pending"
            )
        ).all()
        for a in pending:
            base = satisfaction.get(a.ratee_id, 80.0)
            answers = {}
            items = assignment_items(session, policy, a.cycle_id, a.ratee_id, a.rater_type)
            for i, item in enumerate(items):
                # Raters broadly agree with the service data, with a personal bias per rater.
                wobble = zlib.crc32(f"{a.rater_id}:{a.ratee_id}:{item.id}".encode()) % 3 - 1
                score = max(1, min(5, round(1 + 4 * base / 100) + wobble * (i % 2)))
                needs = score in item.comment_required_for
                answers[item.id] = (score, f"demo: observed level {score}" if needs else "")
            submit_evaluation(
                session, a.id, answers, actor=Actor.person(a.rater_id), policy=policy
            )
        self.log(f"  cycle {cycle.id}: {len(pending)} evaluations submitted")

    def _calibrate(self, session: Session, cycle: Cycle) -> dict[str, Any]:
        from perfcycle.domain.calibration_analytics import anomaly_report

        policy = cycle_policy(cycle)
        report = anomaly_report(session, cycle, policy)
        attempt = engine.stage_instances(session, cycle.id)["calibration"].attempt
        outliers = [
            o["employee_id"] if isinstance(o, dict) else o for o in report.get("outliers", [])
        ]
        if attempt == 1 and outliers and cycle.policy == POLICIES[0]:
            self.log(f"  cycle {cycle.id}: committee sends {outliers[0]} back for re-evaluation")
            return {
                "decision": "send_back",
                "approver": "committee-chair",
                "comment": "rating far from the mean; re-check with the raters",
                "send_back_employees": outliers[:1],
            }
        self.log(
            f"  cycle {cycle.id}: committee approves (distribution {report.get('distribution')})"
        )
        return {
            "decision": "approve",
            "approver": "committee-chair",
            "comment": "distribution reviewed, anomalies checked",
        }

    def _interviews(self, session: Session, cycle: Cycle) -> None:
        from perfcycle.domain.models import Interview
        from perfcycle.domain.stages.interview import acknowledge_interview, record_interview

        rows = session.scalars(
            select(Interview).where(
                Interview.cycle_id == cycle.id, Interview.state.in_(["scheduled", "held"])
            )
        ).all()
        for iv in rows:
            if iv.state == "scheduled":
                record_interview(
                    session,
                    iv.id,
                    summary="results reviewed one-to-one",
                    root_causes="response time at peak hours",
                    actor=_manager_or_hr(iv.manager_id),
                )
            acknowledge_interview(session, iv.id, actor=Actor.person(iv.employee_id))
        self.log(f"  cycle {cycle.id}: {len(rows)} review interviews held and acknowledged")

    def _plans(self, session: Session, cycle: Cycle) -> None:
        from perfcycle.domain.models import ImprovementPlan
        from perfcycle.domain.stages.improvement import close_plan, record_checkin, update_plan

        plans = session.scalars(
            select(ImprovementPlan).where(
                ImprovementPlan.cycle_id == cycle.id, ImprovementPlan.state == "open"
            )
        ).all()
        for plan in plans:
            owner = _manager_or_hr(plan.owner_id)
            update_plan(
                session,
                plan.id,
                goal=plan.goal,
                actions=[
                    {"action": "shadow a senior agent weekly", "due": plan.deadline.isoformat()}
                ],
                actor=owner,
            )
            month = clock.now().strftime("%Y-%m")
            record_checkin(
                session,
                plan.id,
                month=month,
                progress=100,
                note="targets met two months running",
                actor=owner,
            )
            close_plan(
                session,
                plan.id,
                effect_verified=True,
                outcome="satisfaction back above target",
                actor=owner,
            )
        self.log(f"  cycle {cycle.id}: {len(plans)} improvement plans followed up and closed")

    def _appeals(self, session: Session, cycle: Cycle) -> None:
        from perfcycle.domain.models import Appeal
        from perfcycle.domain.stages.appeal import accept_results, decide_appeal, file_appeal

        rows = session.scalars(
            select(Appeal)
            .where(Appeal.cycle_id == cycle.id, Appeal.state.in_(["open", "filed"]))
            .order_by(Appeal.employee_id)
        ).all()
        filed = 0
        for i, ap in enumerate(rows):
            if ap.state == "open" and i == 0:
                file_appeal(
                    session,
                    cycle.id,
                    ap.employee_id,
                    reason="two complaints were misattributed to me",
                    actor=Actor.person(ap.employee_id),
                )
                session.flush()
                decide_appeal(
                    session,
                    ap.id,
                    outcome="upheld",
                    note="complaint records checked; attribution correct",
                    actor=Actor.named("supervision-chair", "supervision"),
                    policy=cycle_policy(cycle),
                )
                filed += 1
            elif ap.state == "open":
                accept_results(
                    session, cycle.id, ap.employee_id, actor=Actor.person(ap.employee_id)
                )
        self.log(
            f"  cycle {cycle.id}: {len(rows) - filed} accepted results, {filed} appeal decided"
        )


def prepare_demo_data(home: Path, period: str) -> tuple[str, int]:
    """Sample org into the database and its ticket system; returns (tickets URL, headcount)."""
    from perfcycle.devtools.demo_data import generate_tickets, sample_org, write_org_csv
    from perfcycle.domain.cycles import parse_period
    from perfcycle.domain.org import import_org_csv

    rows = sample_org()
    csv_path = home / "sample-org.csv"
    write_org_csv(rows, csv_path)
    with session_scope() as session:
        import_org_csv(session, csv_path, actor="hr-admin")
    start, end = parse_period(period)
    tickets_url = f"sqlite:///{(home / 'tickets.db').resolve()}"
    generate_tickets(tickets_url, rows, start, end)
    return tickets_url, len(rows)


def drive(cycle_ids: list[int], player: Player, timeout_s: float = 600) -> None:
    """Play each cycle whenever its run is waiting, resume it, until all are completed."""
    from perfcycle.orchestration.client import resume, run_info

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waiting = 0
        for cycle_id in cycle_ids:
            with session_scope() as session:
                cycle = engine.get_cycle(session, cycle_id)
                run_id = cycle.flow_run_id
                done = cycle.state == "completed"
            if not run_id:
                waiting += 1
                continue
            info = run_info(run_id)
            if done and info.final:
                continue
            waiting += 1
            if info.final and info.state_type != "COMPLETED":
                raise RuntimeError(f"cycle {cycle_id}: flow run {run_id} ended {info.state_name}")
            if not info.paused:
                continue
            with session_scope() as session:
                cycle = engine.get_cycle(session, cycle_id)
                run_input = player.act(session, cycle)
            if run_input is not None:
                resume(run_id, run_input=run_input)
                continue
            with session_scope() as session:
                reason = engine.resume_reason(session, engine.get_cycle(session, cycle_id))
            if reason:
                resume(run_id)
        if waiting == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"demo cycles {cycle_ids} did not finish in {timeout_s:.0f} s")


def demo_command(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from perfcycle.core.settings import get_settings
    from perfcycle.devtools.devstack import Stack
    from perfcycle.domain import audit
    from perfcycle.domain.reports import results_text
    from perfcycle.domain.results import results_table
    from perfcycle.orchestration.client import launch

    home = (Path(os.environ.get("PERFCYCLE_HOME", ".perfcycle")) / "demo").resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["PERFCYCLE_HOME"] = str(home)
    os.environ.pop("PERFCYCLE_DATABASE_URL", None)
    os.environ["PERFCYCLE_TICKETS_URL"] = f"sqlite:///{home / 'tickets.db'}"
    get_settings.cache_clear()

    started = time.monotonic()
    print(f"perfcycle demo — working folder {home}")
    with Stack(home=home, free_ports=not args.keep_running) as stack:
        for name, url in stack.urls.items():
            print(f"  {name:<14} {url}")
        tickets_url, headcount = prepare_demo_data(home, args.period)
        print(f"Loaded {headcount} employees in 3 departments; ticket data in {tickets_url}")
        with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}):
            runs = [launch(p, args.period, [], None) for p in POLICIES]
            print(f"Launched {len(runs)} cycles through review-cycle/launch: {', '.join(runs)}")
            cycle_ids = _wait_for_cycles(runs)
            drive(cycle_ids, Player())
        with session_scope() as session:
            for cycle_id in cycle_ids:
                cycle = engine.get_cycle(session, cycle_id)
                print(f"\nCycle {cycle.id} — {cycle.policy} {cycle.period}: {cycle.state}")
                print(results_text(results_table(session, cycle_id)))
            report = audit.verify(session)
        print(f"\nAudit chain: {'OK' if report.ok else 'BROKEN'} ({report.checked} events)")
        print(
            f"Demo finished in {time.monotonic() - started:.0f} s. Flow runs: "
            f"{stack.urls.get('prefect_ui', '')}/runs"
        )
        if args.keep_running:
            print("Stack is up; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


def _wait_for_cycles(run_ids: list[str], timeout_s: float = 180) -> list[int]:
    """The flow creates the cycle; wait until each launched run has one (or failed)."""
    from perfcycle.orchestration.client import run_info

    deadline = time.monotonic() + timeout_s
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        with session_scope() as session:
            for cycle in session.scalars(select(Cycle).where(Cycle.flow_run_id.in_(run_ids))):
                found[cycle.flow_run_id or ""] = cycle.id
        if len(found) == len(run_ids):
            return [found[r] for r in run_ids]
        for r in run_ids:
            info = run_info(r)
            if r not in found and info.final:
                raise RuntimeError(f"flow run {r} ended {info.state_name} before opening a cycle")
        time.sleep(0.5)
    raise TimeoutError("launched runs did not open their cycles in time")
