"""Whole review cycles at the domain level (no Prefect), as HR, raters and the committee live them.

Each test plays the demo organisation through tests/support/cycle.py, which steps the engine exactly
as flows/review_cycle.py does, and checks what people rely on: every stage runs in policy order,
nothing is done twice, a crash converges, deadlines act as the policy says, calibration decisions
stick, bad launches create nothing, and the audit chain catches tampering.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import Table

from perfcycle.core.db import UTCDateTime, get_engine, session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain import audit, cycles, engine
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Base,
    CalibrationChange,
    CalibrationDecision,
    Cycle,
    Goal,
    OutboxMessage,
    Participant,
    RaterAssignment,
    Result,
    StageInstance,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages import calibration as calibration_stage
from perfcycle.domain.stages import evaluation as evaluation_stage
from perfcycle.domain.stages import target_setting as target_setting_stage
from perfcycle.domain.stages.base import StageContext
from perfcycle.domain.stages.evaluation import submit_evaluation
from perfcycle.notifications import notify, outbox
from tests.support import databases
from tests.support.cycle import (
    DemoOrg,
    InjectedCrash,
    act,
    decide,
    full_answers,
    launch,
    play_until_waiting_at,
    play_whole_cycle,
    play_whole_cycle_surviving,
    prepare_demo_org,
    run_until_wait,
    table_rows,
)
from tests.support.databases import sqlite_url
from tests.support.factories import freeze

PERIOD = "2026-Q4"
SHIPPED = ["external-service", "internal-service", "professional-support"]
SHIPPED_DIR = REPO_ROOT / "policies"
# A Monday morning well after the period: every frozen-clock test starts here.
T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def demo(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_org_built: DemoOrg
) -> Iterator[DemoOrg]:
    """The demo organisation in the test database, its ticket system beside it."""
    org = databases.copy_demo_org(demo_org_built, db_url, tmp_path)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    get_settings.cache_clear()
    yield org
    get_settings.cache_clear()


@dataclass(frozen=True)
class Finished:
    """A cycle of one shipped policy played to the end on the demo organisation, once per
    module; tests that write to it take a copy (finished_copy)."""

    url: str
    cycle_id: int
    waits: list[str]


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, demo_org_built: DemoOrg
) -> dict[str, Finished]:
    out: dict[str, Finished] = {}
    for policy_name in SHIPPED:
        folder = tmp_path_factory.mktemp(f"finished-{policy_name}")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PERFCYCLE_HOME", str(folder))
            env.delenv("PERFCYCLE_NOW", raising=False)
            env.delenv("PERFCYCLE_POLICIES_DIR", raising=False)
            url = sqlite_url(folder / "perfcycle.db")
            org = databases.copy_demo_org(demo_org_built, url, folder)
            env.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
            get_settings.cache_clear()
            cycle_id = launch(url, policy_name, PERIOD)
            waits = play_whole_cycle(url, cycle_id).waits
        get_settings.cache_clear()
        out[policy_name] = Finished(url, cycle_id, waits)
    return out


def finished_copy(finished: Finished, demo: DemoOrg) -> int:
    """Make `demo`'s database a copy of `finished` (same organisation, same tickets); returns
    the finished cycle's id."""
    databases.copy_sqlite(finished.url, databases.sqlite_path(demo.url))
    return finished.cycle_id


def use_policies(
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    edits: dict[str, Callable[[dict[str, Any]], None]],
) -> Path:
    """A policies directory with the shipped files, some of them edited; settings point at it."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in SHIPPED_DIR.glob("*.yaml"):
        source = path.read_text(encoding="utf-8")
        if path.stem in edits:
            data = yaml.safe_load(source)
            edits[path.stem](data)
            source = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        (folder / path.name).write_text(source, encoding="utf-8")
    monkeypatch.setenv("PERFCYCLE_POLICIES_DIR", str(folder))
    get_settings.cache_clear()
    return folder


def set_deadline_rule(stage: str, rule: Any) -> Callable[[dict[str, Any]], None]:
    def edit(policy: dict[str, Any]) -> None:
        for entry in policy["stages"]:
            if entry["name"] == stage:
                entry["on_deadline"] = rule

    return edit


def stage_of(url: str, cycle_id: int, name: str) -> StageInstance:
    with session_scope(url) as session:
        return engine.stage_instances(session, cycle_id)[name]


def resume_reason(url: str, cycle_id: int) -> str | None:
    with session_scope(url) as session:
        return engine.resume_reason(session, engine.get_cycle(session, cycle_id))


def mails(url: str, template: str) -> list[OutboxMessage]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.template == template)
                .order_by(OutboxMessage.id)
            )
        )


def count(url: str, model: type[Base], *where: Any) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def audit_actions(url: str, action: str) -> list[AuditEvent]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def assert_same_records(got: dict[str, list[str]], expected: dict[str, list[str]]) -> None:
    differences = {
        name: {
            "only here": sorted(set(rows) - set(expected[name]))[:3],
            "only in the reference": sorted(set(expected[name]) - set(rows))[:3],
        }
        for name, rows in got.items()
        if rows != expected[name]
    }
    assert not differences, json.dumps(differences, indent=1, ensure_ascii=False)


def assert_same_rows(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> None:
    changed = {
        name: {
            "added": [r for r in after[name] if r not in rows][:3],
            "gone": [r for r in rows if r not in after[name]][:3],
        }
        for name, rows in before.items()
        if after[name] != rows
    }
    assert not changed, f"rows changed: {changed}"


# ---------------------------------------------------------------- 1. a whole cycle


@pytest.mark.parametrize("policy_name", SHIPPED)
def test_a_whole_cycle_of_each_shipped_policy_completes(
    demo: DemoOrg, finished: dict[str, Finished], policy_name: str
) -> None:
    cycle_id = finished_copy(finished[policy_name], demo)

    assert "calibration:approval" in finished[policy_name].waits
    with session_scope(demo.url) as session:
        cycle = engine.get_cycle(session, cycle_id)
        policy = cycle_policy(cycle)
        assert (cycle.state, cycle.current_stage) == ("completed", None)
        assert cycle.completed_at is not None

        order = [s.name for s in policy.stages]
        stages = session.scalars(
            select(StageInstance)
            .where(StageInstance.cycle_id == cycle_id)
            .order_by(StageInstance.position)
        ).all()
        assert [s.name for s in stages] == order
        closed = [s.closed_at for s in stages if s.state == "completed" and s.closed_at]
        assert len(closed) == len(order)
        assert closed == sorted(closed), "stages closed out of policy order"
        opened = session.scalars(
            select(AuditEvent.subject)
            .where(AuditEvent.cycle_id == cycle_id, AuditEvent.action == "stage.opened")
            .order_by(AuditEvent.id)
        ).all()
        assert [s.rsplit(":", 1)[1] for s in opened] == order

        participants = set(
            session.scalars(select(Participant.employee_id).where(Participant.cycle_id == cycle_id))
        )
        results = session.scalars(select(Result).where(Result.cycle_id == cycle_id)).all()
        assert participants and {r.employee_id for r in results} == participants
        assert all(r.released_at is not None for r in results)
        assert {r.grade for r in results} <= set(policy.grade_ids())

        report = audit.verify(session)
        assert report.ok, report
        assert report.checked == session.scalar(select(func.count()).select_from(AuditEvent))

        _assert_one_assignment_mail_per_rater(session, cycle_id)


def _assert_one_assignment_mail_per_rater(session: Session, cycle_id: int) -> None:
    """Per evaluation attempt, one mail per rater listing all their ratees — never per ratee."""
    attempts = engine.stage_instances(session, cycle_id)["evaluation"].attempt
    assignments = session.execute(
        select(RaterAssignment.rater_id, RaterAssignment.round).where(
            RaterAssignment.cycle_id == cycle_id
        )
    ).all()
    sent = session.execute(
        select(OutboxMessage.recipient_id, OutboxMessage.idempotency_key).where(
            OutboxMessage.cycle_id == cycle_id, OutboxMessage.template == "evaluation_assigned"
        )
    ).all()
    for attempt in range(1, attempts + 1):
        recipients = Counter(r for r, key in sent if key.endswith(f":evaluation:{attempt}"))
        raters = {rater for rater, round_ in assignments if round_ >= attempt}
        assert set(recipients) == raters
        assert set(recipients.values()) == {1}
    assert len(sent) < len(assignments), "mails were sent per ratee"


# ---------------------------------------------------------------- 2. nothing done twice


def test_rerunning_a_finished_cycle_changes_nothing(
    demo: DemoOrg, finished: dict[str, Finished]
) -> None:
    cycle_id = finished_copy(finished["external-service"], demo)
    before = table_rows(demo.url)

    assert run_until_wait(demo.url, cycle_id).next == "finished"
    with session_scope(demo.url) as session:
        cycle = engine.get_cycle(session, cycle_id)
        policy = cycle_policy(cycle)
        for name, inst in engine.stage_instances(session, cycle_id).items():
            engine.handler_for(name).enter(StageContext(session, cycle, policy, inst))
            engine.close_stage(session, cycle, policy, inst)
        engine.finish_cycle(session, cycle)
        again, created = cycles.open_cycle(
            session,
            cycles.validate_launch(session, cycles.LaunchRequest("external-service", PERIOD)),
            "run-2",
        )
        assert (again.id, created) == (cycle_id, False)
    assert run_until_wait(demo.url, cycle_id).next == "finished"
    assert resume_reason(demo.url, cycle_id) is None

    assert_same_rows(before, table_rows(demo.url))


def test_the_same_launch_is_one_cycle_whatever_the_scope_order(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def two_types(policy: dict[str, Any]) -> None:
        policy["department_types"] = ["internal_service", "professional_support"]

    use_policies(tmp_path / "policies", monkeypatch, {"internal-service": two_types})
    it, fin = (
        demo.department_of_type("internal_service"),
        demo.department_of_type("professional_support"),
    )

    def open_(scope: list[str]) -> tuple[int, bool]:
        with session_scope(demo.url) as session:
            request = cycles.LaunchRequest("internal-service", PERIOD, scope)
            cycle, created = cycles.open_cycle(
                session, cycles.validate_launch(session, request), "run"
            )
            return cycle.id, created

    first, created = open_([it, fin])
    assert created
    participants = count(demo.url, Participant, Participant.cycle_id == first)
    assert open_([fin, it]) == (first, False)
    assert open_([fin, it, it, f" {fin} "]) == (first, False)
    # Every department the policy applies to, named or not, is the same cycle.
    assert open_([]) == (first, False)
    assert count(demo.url, Cycle) == 1
    assert count(demo.url, Participant) == participants
    assert len(audit_actions(demo.url, "cycle.opened")) == 1


def test_a_period_typed_with_spaces_is_the_same_cycle(demo: DemoOrg) -> None:
    first = launch(demo.url, "internal-service", PERIOD)
    assert launch(demo.url, "internal-service", f" {PERIOD} ") == first
    assert count(demo.url, Cycle) == 1


# ---------------------------------------------------------------- 3. crash convergence

# JSON keys whose values differ between two runs of the same inputs: times, and the name of the
# temporary CSV the demo player writes when HR supplies metrics.
PLACEHOLDERS = {
    **dict.fromkeys(["due_at", "deadline", "window_closes"], "<time>"),
    "file": "<file>",
    # Portal links carry a random token (stored hashed): equal runs differ in them only.
    "link": "<link>",
}
RANDOM_COLUMNS = {"token_hash"}


def _normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: PLACEHOLDERS.get(k) or _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _natural_keys(session: Session) -> dict[str, dict[int, tuple[Any, ...]]]:
    """Surrogate id -> natural key, for the tables other rows point at by id."""
    from perfcycle.domain.models import ImprovementPlan

    return {
        "assignment_id": {
            a.id: (a.cycle_id, a.rater_id, a.ratee_id, a.rater_type)
            for a in session.scalars(select(RaterAssignment))
        },
        "plan_id": {
            p.id: (p.cycle_id, p.employee_id) for p in session.scalars(select(ImprovementPlan))
        },
    }


def domain_records(url: str) -> dict[str, list[str]]:
    """Every domain row (audit excluded) without surrogate ids or timestamps, sorted."""
    skipped = {"audit_events", "alembic_version"}
    with session_scope(url) as session:
        keys = _natural_keys(session)
        records: dict[str, list[str]] = {}
        for table in Base.metadata.sorted_tables:
            if table.name in skipped:
                continue
            records[table.name] = sorted(
                json.dumps(_record(table, dict(row._mapping), keys), sort_keys=True, default=str)
                for row in session.execute(select(table))
            )
        return records


def _record(
    table: Table, row: dict[str, Any], keys: dict[str, dict[int, tuple[Any, ...]]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in table.columns:
        name = column.name
        if column.primary_key or isinstance(column.type, UTCDateTime):
            continue
        value = row[name]
        if name in keys and value is not None:
            value = keys[name][value]
        if name in RANDOM_COLUMNS:
            value = f"<{name}>"
        out[name] = _normalised(value)
    return out


@dataclass
class CrashOnce:
    """Stands in for a stage module's `outbox`: the first enqueue of `template` fails the run,
    after noting how much the stage had already written in its transaction."""

    template: str
    written: Callable[[Session], int]
    written_before_crash: int | None = None
    Mail = outbox.Mail

    def enqueue(self, session: Session, batch: Any) -> int:
        batch = list(batch)
        if self.written_before_crash is None and any(m.template == self.template for m in batch):
            self.written_before_crash = self.written(session)
            raise InjectedCrash(f"injected before enqueueing {self.template}")
        return outbox.enqueue(session, batch)


@pytest.fixture(scope="module")
def reference_records(finished: dict[str, Finished]) -> dict[str, list[str]]:
    """The external-service cycle, undisturbed, on a database of its own with the same inputs:
    what every disturbed run must converge to."""
    return domain_records(finished["external-service"].url)


def _goals_written(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Goal)) or 0


def _assignments_written(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(RaterAssignment)) or 0


def _results_released(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Result).where(Result.released_at.is_not(None))
        )
        or 0
    )


CRASHES = {
    "target_setting enter, goals written, mails not": (
        target_setting_stage,
        "goals_to_agree",
        _goals_written,
    ),
    "evaluation enter, assignments written, mails not": (
        evaluation_stage,
        "evaluation_assigned",
        _assignments_written,
    ),
    "calibration close, results released, mails not": (
        calibration_stage,
        "results_released",
        _results_released,
    ),
}


@pytest.mark.parametrize("where", list(CRASHES))
def test_a_crash_mid_stage_converges_to_the_undisturbed_records(
    demo: DemoOrg,
    reference_records: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    _, template, written = CRASHES[where]
    crash = CrashOnce(template, written)
    # Stages enqueue through perfcycle.notifications.notify, which writes through its `outbox`.
    monkeypatch.setattr(notify, "outbox", crash)

    cycle_id = launch(demo.url, "external-service", PERIOD)
    outcome, crashes = play_whole_cycle_surviving(demo.url, cycle_id)

    assert crashes == 1
    assert crash.written_before_crash, "the crash came before the stage wrote anything"
    assert outcome.waits[-1] == "appeal:people"
    assert_same_records(domain_records(demo.url), reference_records)
    with session_scope(demo.url) as session:
        assert audit.verify(session).ok


KILL_SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
from perfcycle.domain import engine
from perfcycle.notifications import outbox
from perfcycle.domain.stages import evaluation
from tests.support import cycle as cycle_driver

KILLED = 70
where = {where!r}

if where == "evaluation enter":
    real_insert = evaluation.handler.insert_ignore

    def insert_then_die(session, table, rows):
        real_insert(session, table, rows)
        session.flush()
        os._exit(KILLED)

    evaluation.handler.insert_ignore = insert_then_die
elif where == "before assessing evaluation":
    real_assess = engine.assess

    def die_before_evaluation(session, cycle, policy, inst):
        if inst.name == "evaluation":
            os._exit(KILLED)
        return real_assess(session, cycle, policy, inst)

    engine.assess = die_before_evaluation
elif where == "calibration close":
    real_enqueue = outbox.enqueue

    def die_on_release(session, mails):
        mails = list(mails)
        if any(m.template == "results_released" for m in mails):
            session.flush()
            os._exit(KILLED)
        return real_enqueue(session, mails)

    outbox.enqueue = die_on_release
cycle_driver.run_until_wait({url!r}, {cycle_id})
sys.exit(3)  # the kill point was never reached
"""


def _advance_to_kill_point(url: str, cycle_id: int, where: str) -> None:
    """Play in this process (the player's choices must be the reference's) up to the step that
    the child process runs and dies in."""
    if where == "calibration close":
        while True:
            play_until_waiting_at(url, cycle_id, "calibration")
            decision = act(url, cycle_id)
            if decision and decision["decision"] == "approve":
                return
    play_until_waiting_at(url, cycle_id, "data_collection")
    act(url, cycle_id)


def _assert_killed_mid_stage(url: str, cycle_id: int, where: str) -> None:
    """What the killed run left behind: committed steps stay, the dying transaction is gone."""
    if where == "calibration close":
        assert stage_of(url, cycle_id, "calibration").state == "open"
        assert count(url, Result, Result.released_at.is_not(None)) == 0
        return
    evaluation = stage_of(url, cycle_id, "evaluation")
    assert (evaluation.state, evaluation.waits) == ("open", 0)
    entered = where == "before assessing evaluation"
    assert (count(url, RaterAssignment) > 0) is entered
    assert (len(mails(url, "evaluation_assigned")) > 0) is entered


@pytest.mark.parametrize(
    "where", ["evaluation enter", "before assessing evaluation", "calibration close"]
)
def test_a_process_killed_mid_stage_converges_to_the_undisturbed_records(
    demo: DemoOrg, reference_records: dict[str, list[str]], tmp_path: Path, where: str
) -> None:
    cycle_id = launch(demo.url, "external-service", PERIOD)
    _advance_to_kill_point(demo.url, cycle_id, where)
    script = tmp_path / "killed.py"
    script.write_text(
        KILL_SCRIPT.format(repo=str(REPO_ROOT), where=where, url=demo.url, cycle_id=cycle_id)
    )
    child = subprocess.run(
        [sys.executable, str(script)], env=os.environ.copy(), capture_output=True, timeout=120
    )
    assert child.returncode == 70, child.stderr.decode()[-2000:]
    _assert_killed_mid_stage(demo.url, cycle_id, where)

    outcome, crashes = play_whole_cycle_surviving(demo.url, cycle_id)
    assert crashes == 0 and outcome.waits[-1] == "appeal:people"
    assert_same_records(domain_records(demo.url), reference_records)
    with session_scope(demo.url) as session:
        assert audit.verify(session).ok


# ---------------------------------------------------------------- 4. deadlines


def test_escalate_mails_hr_once_extends_by_the_grace_then_advances(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze(monkeypatch, T0)
    cycle_id = launch(demo.url, "external-service", PERIOD)  # target_setting: escalate
    status = run_until_wait(demo.url, cycle_id)
    assert (status.stage, status.next) == ("target_setting", "people")
    due = stage_of(demo.url, cycle_id, "target_setting").due_at
    assert due == T0 + timedelta(days=14)
    assert resume_reason(demo.url, cycle_id) is None

    freeze(monkeypatch, due + timedelta(minutes=1))
    assert resume_reason(demo.url, cycle_id) == "deadline"
    for _ in range(2):  # the clock may resume the run more than once: still one escalation
        status = run_until_wait(demo.url, cycle_id)
        assert (status.stage, status.next) == ("target_setting", "people")
    inst = stage_of(demo.url, cycle_id, "target_setting")
    assert inst.escalated and inst.state == "open"
    assert inst.due_at == due + timedelta(days=2)  # escalation_grace_days default
    escalations = mails(demo.url, "stage_escalated")
    assert [m.recipient_email for m in escalations] == [get_settings().hr_email]
    assert escalations[0].context["stage"] == "target_setting"
    assert resume_reason(demo.url, cycle_id) is None

    freeze(monkeypatch, inst.due_at)
    assert resume_reason(demo.url, cycle_id) == "deadline"
    status = run_until_wait(demo.url, cycle_id)
    assert status.stage == "data_collection"
    inst = stage_of(demo.url, cycle_id, "target_setting")
    assert (inst.state, inst.close_reason) == ("completed", "deadline")
    # Unsigned goals apply as proposed, and the missing signatures stay visible.
    assert count(demo.url, Goal, Goal.state != "agreed") == 0
    assert count(demo.url, Goal, Goal.manager_signed_at.is_not(None)) == 0
    assert len(mails(demo.url, "stage_escalated")) == 1
    with session_scope(demo.url) as session:
        assert audit.verify(session).ok  # many events share one frozen instant


def _submit_some(url: str, cycle_id: int, n: int) -> set[int]:
    """n raters fill in their form (all 4s, with a comment); returns the assignment ids."""
    with session_scope(url) as session:
        policy = cycle_policy(engine.get_cycle(session, cycle_id))
        pending = session.scalars(
            select(RaterAssignment)
            .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending")
            .order_by(RaterAssignment.id)
            .limit(n)
        ).all()
        for a in pending:
            answers = full_answers(session, a, comment="seen at work")
            submit_evaluation(session, a.id, answers, actor=Actor.person(a.rater_id), policy=policy)
        return {a.id for a in pending}


def _assignment_states(url: str, cycle_id: int) -> dict[int, str]:
    with session_scope(url) as session:
        return dict(
            session.execute(
                select(RaterAssignment.id, RaterAssignment.state).where(
                    RaterAssignment.cycle_id == cycle_id
                )
            )
            .tuples()
            .all()
        )


def test_extend_moves_the_deadline_once_then_advances_expiring_the_rest(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze(monkeypatch, T0)
    cycle_id = launch(demo.url, "external-service", PERIOD)  # evaluation: {extend: 5}
    run_until_wait(demo.url, cycle_id)
    assert resume_reason(demo.url, cycle_id) is None
    act(demo.url, cycle_id)  # goals signed
    assert resume_reason(demo.url, cycle_id) == "complete"
    play_until_waiting_at(demo.url, cycle_id, "evaluation")
    submitted = _submit_some(demo.url, cycle_id, 5)
    due = stage_of(demo.url, cycle_id, "evaluation").due_at
    assert due == T0 + timedelta(days=14)

    freeze(monkeypatch, due)
    assert resume_reason(demo.url, cycle_id) == "deadline"
    for _ in range(2):
        status = run_until_wait(demo.url, cycle_id)
        assert (status.stage, status.next) == ("evaluation", "people")
    inst = stage_of(demo.url, cycle_id, "evaluation")
    assert (inst.due_at, inst.extensions, inst.state) == (due + timedelta(days=5), 1, "open")
    assert len(audit_actions(demo.url, "stage.extended")) == 1
    assert resume_reason(demo.url, cycle_id) is None

    freeze(monkeypatch, inst.due_at)
    status = run_until_wait(demo.url, cycle_id)
    assert (status.stage, status.next) == ("calibration", "approval")
    inst = stage_of(demo.url, cycle_id, "evaluation")
    assert (inst.state, inst.close_reason) == ("completed", "deadline")
    assert inst.due_at == due + timedelta(days=5)
    states = _assignment_states(demo.url, cycle_id)
    assert {states[i] for i in submitted} == {"submitted"}
    assert {s for i, s in states.items() if i not in submitted} == {"expired"}
    assert inst.summary["closed"] == {"submitted": 5, "expired": len(states) - 5}


def test_advance_closes_at_the_deadline_and_expires_pending_forms(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_policies(
        tmp_path / "policies",
        monkeypatch,
        {"internal-service": set_deadline_rule("evaluation", "advance")},
    )
    freeze(monkeypatch, T0)
    cycle_id = launch(demo.url, "internal-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "evaluation")
    submitted = _submit_some(demo.url, cycle_id, 3)
    due = stage_of(demo.url, cycle_id, "evaluation").due_at

    freeze(monkeypatch, due - timedelta(seconds=1))
    assert resume_reason(demo.url, cycle_id) is None
    assert run_until_wait(demo.url, cycle_id).stage == "evaluation"
    freeze(monkeypatch, due)
    assert resume_reason(demo.url, cycle_id) == "deadline"
    status = run_until_wait(demo.url, cycle_id)
    assert (status.stage, status.next) == ("calibration", "approval")
    inst = stage_of(demo.url, cycle_id, "evaluation")
    assert (inst.state, inst.close_reason, inst.extensions) == ("completed", "deadline", 0)
    states = _assignment_states(demo.url, cycle_id)
    assert {states[i] for i in submitted} == {"submitted"}
    assert {s for i, s in states.items() if i not in submitted} == {"expired"}
    assert mails(demo.url, "stage_escalated") == []


@pytest.mark.parametrize("rule", ["advance", "escalate", {"extend": 3}])
def test_calibration_never_advances_at_its_deadline_but_escalates_once(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: Any
) -> None:
    use_policies(
        tmp_path / "policies",
        monkeypatch,
        {"internal-service": set_deadline_rule("calibration", rule)},
    )
    freeze(monkeypatch, T0)
    cycle_id = launch(demo.url, "internal-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "calibration")
    due = stage_of(demo.url, cycle_id, "calibration").due_at

    for late in (timedelta(minutes=1), timedelta(days=3), timedelta(days=90)):
        freeze(monkeypatch, due + late)
        assert resume_reason(demo.url, cycle_id) is None
        status = run_until_wait(demo.url, cycle_id)
        assert (status.stage, status.next) == ("calibration", "approval")
    inst = stage_of(demo.url, cycle_id, "calibration")
    assert (inst.state, inst.escalated, inst.due_at, inst.close_reason) == (
        "open",
        True,
        due,
        None,
    )
    escalations = mails(demo.url, "stage_escalated")
    assert [(m.recipient_email, m.context["stage"]) for m in escalations] == [
        (get_settings().hr_email, "calibration")
    ]
    assert count(demo.url, Result, Result.released_at.is_not(None)) == 0

    act(demo.url, cycle_id)  # the committee finally approves
    assert run_until_wait(demo.url, cycle_id).stage == "interview"
    assert stage_of(demo.url, cycle_id, "calibration").close_reason == "complete"


# ---------------------------------------------------------------- 5. calibration


def test_after_a_late_re_evaluation_the_committee_still_gets_its_full_period(
    demo: DemoOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = demo.url
    cycle_id = launch(url, "external-service", PERIOD)  # evaluation: 14 days, then extend 5
    play_until_waiting_at(url, cycle_id, "calibration")
    target = sorted(
        set(_ratees(url, cycle_id))
    )[0]
    decide(url, cycle_id, decision="send_back", approver="chair", comment="re-check",
           send_back_employees=[target])
    evaluation_due = stage_of(url, cycle_id, "evaluation").due_at
    assert stage_of(url, cycle_id, "calibration").due_at == evaluation_due + timedelta(days=7)

    # Re-evaluation runs into its extension: the clock moves the deadline by 5 days...
    freeze(monkeypatch, evaluation_due + timedelta(hours=1))
    assert run_until_wait(url, cycle_id).stage == "evaluation"
    assert stage_of(url, cycle_id, "evaluation").due_at == evaluation_due + timedelta(days=5)
    # ...and the raters finish on day 4 of it.
    finished = evaluation_due + timedelta(days=4)
    freeze(monkeypatch, finished)
    with session_scope(url) as session:
        pending = session.scalars(
            select(RaterAssignment).where(
                RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "pending"
            )
        ).all()
        policy = cycle_policy(engine.get_cycle(session, cycle_id))
        for a in pending:
            submit_evaluation(
                session, a.id, full_answers(session, a), Actor.person(a.rater_id), policy
            )
    status = play_until_waiting_at(url, cycle_id, "calibration")
    assert status.next == "approval"
    # Seven days from when the committee has the results again, not from the old deadline.
    assert stage_of(url, cycle_id, "calibration").due_at == finished + timedelta(days=7)
    assert audit_actions(url, "stage.deadline_reset")


def _ratees(url: str, cycle_id: int) -> list[str]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(RaterAssignment.ratee_id).where(RaterAssignment.cycle_id == cycle_id)
            )
        )


def test_send_back_reopens_only_the_named_employee_then_approve_with_an_adjustment(
    demo: DemoOrg,
) -> None:
    url = demo.url
    cycle_id = launch(url, "internal-service", PERIOD)
    first_wait = play_until_waiting_at(url, cycle_id, "calibration")
    first_due = stage_of(url, cycle_id, "calibration").due_at
    with session_scope(url) as session:
        before = {
            a.id: (a.ratee_id, a.state, a.round)
            for a in session.scalars(
                select(RaterAssignment).where(RaterAssignment.cycle_id == cycle_id)
            )
        }
    target = sorted({ratee for ratee, _, _ in before.values()})[1]

    decide(
        url,
        cycle_id,
        decision="send_back",
        approver="committee-chair",
        comment="ratings far apart; re-check",
        send_back_employees=[target],
    )

    with session_scope(url) as session:
        after = {
            a.id: (a.ratee_id, a.state, a.round)
            for a in session.scalars(
                select(RaterAssignment).where(RaterAssignment.cycle_id == cycle_id)
            )
        }
        cycle = engine.get_cycle(session, cycle_id)
        assert cycle.current_stage == "evaluation"
    reopened = {i for i, (ratee, _, _) in before.items() if ratee == target}
    assert reopened and {after[i][1:] for i in reopened} == {("pending", 2)}
    assert {i: after[i] for i in before if i not in reopened} == {
        i: before[i] for i in before if i not in reopened
    }
    evaluation = stage_of(url, cycle_id, "evaluation")
    assert (evaluation.state, evaluation.attempt, evaluation.closed_at) == ("open", 2, None)
    with session_scope(url) as session:
        opened = session.scalars(
            select(OutboxMessage.idempotency_key).where(
                OutboxMessage.template == "stage_opened", OutboxMessage.cycle_id == cycle_id
            )
        ).all()
    # HR hears that evaluation is open again, as it heard the first time.
    assert any(key.endswith(":stage_opened:evaluation:2") for key in opened)
    calibration = stage_of(url, cycle_id, "calibration")
    assert calibration.attempt == 2
    assert calibration.due_at == evaluation.due_at + timedelta(days=7)
    assert calibration.due_at > first_due

    status = run_until_wait(url, cycle_id)
    assert (status.stage, status.next, status.attempt) == ("evaluation", "people", 2)
    # Progress counts the whole cycle's forms: only the re-opened ones are left to do.
    assert status.total - status.done == len(reopened)
    with session_scope(url) as session:
        raters = set(
            session.scalars(
                select(RaterAssignment.rater_id).where(RaterAssignment.id.in_(reopened))
            )
        )
    second_round = [
        m for m in mails(url, "evaluation_assigned") if m.idempotency_key.endswith(":2")
    ]
    assert {m.recipient_id for m in second_round} == raters
    assert all([r["employee_id"] for r in m.context["ratees"]] == [target] for m in second_round)

    act(url, cycle_id)  # the raters re-rate
    status = run_until_wait(url, cycle_id)
    assert (status.stage, status.next, status.attempt) == ("calibration", "approval", 2)
    assert status.key != first_wait.key  # a new pause, so Prefect shows the form again

    with session_scope(url) as session:
        result = session.scalars(
            select(Result).where(Result.cycle_id == cycle_id).order_by(Result.employee_id)
        ).first()
        assert result is not None
        grades = cycle_policy(engine.get_cycle(session, cycle_id)).grade_ids()
        employee, computed = result.employee_id, result.computed_grade
    new_grade = next(g for g in grades if g != result.grade)
    decide(
        url,
        cycle_id,
        decision="approve",
        approver="committee-chair",
        comment="approved after re-evaluation",
        adjustments=[{"employee_id": employee, "grade": new_grade, "reason": "led the migration"}],
    )
    play_whole_cycle(url, cycle_id)

    with session_scope(url) as session:
        change = session.scalars(select(CalibrationChange)).one()
        assert (change.employee_id, change.attempt, change.to_grade, change.reason) == (
            employee,
            2,
            new_grade,
            "led the migration",
        )
        assert change.decided_by == "committee-chair"
        final = session.scalars(
            select(Result).where(Result.cycle_id == cycle_id, Result.employee_id == employee)
        ).one()
        assert (final.grade, final.computed_grade) == (new_grade, computed)
        assert change.from_grade == computed
        decisions = session.execute(
            select(CalibrationDecision.attempt, CalibrationDecision.decision).order_by(
                CalibrationDecision.attempt
            )
        ).all()
        assert [tuple(d) for d in decisions] == [(1, "send_back"), (2, "approve")]


def bad_decisions(someone: str) -> list[tuple[dict[str, Any], set[str], str]]:
    """(decision, the fields the error must name, words it must say)."""
    adjust = {"employee_id": someone, "grade": "A", "reason": "x"}
    return [
        (
            {"decision": "approve", "adjustments": [{**adjust, "employee_id": "E9999"}]},
            {"adjustments.0.employee_id"},
            "E9999 is not in this cycle",
        ),
        (
            {"decision": "approve", "adjustments": [{**adjust, "grade": "Z"}]},
            {"adjustments.0.grade"},
            "grade 'Z' is not one of A, B, C, D, E",
        ),
        (
            {"decision": "send_back", "comment": "recheck"},
            {"send_back_employees"},
            "name the employees to re-evaluate",
        ),
        (
            {"decision": "send_back", "send_back_employees": [someone]},
            {"comment"},
            "say why evaluation is sent back",
        ),
        (
            {"decision": "send_back", "comment": "recheck", "send_back_employees": ["E9999"]},
            {"send_back_employees.0"},
            "E9999 is not in this cycle",
        ),
    ]


def test_bad_committee_decisions_are_refused_and_change_nothing(demo: DemoOrg) -> None:
    cycle_id = launch(demo.url, "internal-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "calibration")
    with session_scope(demo.url) as session:
        someone = session.scalars(
            select(Participant.employee_id).where(Participant.cycle_id == cycle_id)
        ).first()
    assert someone is not None
    before = table_rows(demo.url)

    for decision, fields, message in bad_decisions(someone):
        with pytest.raises(InvalidInput) as err:
            decide(demo.url, cycle_id, approver="committee-chair", **decision)
        assert {p.field for p in err.value.problems} == fields, decision
        assert message in str(err.value)
        assert_same_rows(before, table_rows(demo.url))

    act(demo.url, cycle_id)  # a good decision still goes through afterwards
    assert count(demo.url, CalibrationDecision) == 1


def test_a_grade_adjustment_needs_a_real_reason(demo: DemoOrg) -> None:
    cycle_id = launch(demo.url, "internal-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "calibration")
    with session_scope(demo.url) as session:
        result = session.scalars(select(Result).where(Result.cycle_id == cycle_id)).first()
        assert result is not None
        employee, grade = result.employee_id, result.grade
    before = table_rows(demo.url)
    adjustment = {"employee_id": employee, "grade": "A" if grade != "A" else "B", "reason": "  "}
    with pytest.raises(InvalidInput) as err:
        decide(demo.url, cycle_id, decision="approve", approver="chair", adjustments=[adjustment])
    assert {p.field for p in err.value.problems} == {"adjustments.0.reason"}
    assert_same_rows(before, table_rows(demo.url))


# ---------------------------------------------------------------- 6. bad launches


def _drop_department_employees(demo: DemoOrg, department_type: str) -> None:
    """Re-import the org without one department's people: it exists, nobody active is in it."""
    from perfcycle.devtools.demo_data import write_org_csv
    from perfcycle.domain.org import import_org_csv

    kept = [r for r in demo.rows if r["department_type"] != department_type]
    path = write_org_csv(kept, demo.org_csv.with_name("smaller-org.csv"))
    with session_scope(demo.url) as session:
        import_org_csv(session, path, actor="hr-admin")


def _break_a_weight(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """external-service with the result category at 40 instead of 45 (sum 95)."""
    folder.mkdir()
    for path in SHIPPED_DIR.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    broken = folder / "external-service.yaml"
    lines = broken.read_text(encoding="utf-8").splitlines(keepends=True)
    at = lines.index("    weight: 45\n")
    lines[at] = "    weight: 40\n"
    broken.write_text("".join(lines), encoding="utf-8")
    monkeypatch.setenv("PERFCYCLE_POLICIES_DIR", str(folder))
    get_settings.cache_clear()
    return broken


BAD_LAUNCHES: dict[str, tuple[str, str, list[str], dict[str, str]]] = {
    "unknown policy": ("nope", PERIOD, [], {"policy": "unknown policy 'nope' (available: "}),
    "quarter 5": ("internal-service", "2026-Q5", [], {"period": "'2026-Q5' is not a period"}),
    "month 13": ("internal-service", "2026-13", [], {"period": "month must be 01..12"}),
    "no year": ("internal-service", "Q4", [], {"period": "'Q4' is not a period"}),
    "unknown department": ("internal-service", PERIOD, ["NOPE"], {"scope": "unknown department"}),
    "wrong department type": (
        "internal-service",
        PERIOD,
        ["CS"],
        {"scope": "department 'CS' is external_service; policy 'internal-service' applies to"},
    ),
    "everything at once": (
        "nope",
        "Q4",
        ["NOPE"],
        {"policy": "unknown policy", "period": "is not a period", "scope": "unknown department"},
    ),
}


@pytest.mark.parametrize("case", list(BAD_LAUNCHES))
def test_a_bad_launch_says_what_and_where_and_creates_no_cycle(demo: DemoOrg, case: str) -> None:
    policy, period, scope, expected = BAD_LAUNCHES[case]
    with pytest.raises(InvalidInput) as err:
        launch(demo.url, policy, period, scope)
    by_field = {p.field: p.message for p in err.value.problems}
    assert set(by_field) == set(expected)
    for field, message in expected.items():
        assert message in by_field[field]
    assert count(demo.url, Cycle) == 0
    assert count(demo.url, Participant) == 0


def test_a_launch_with_nobody_in_scope_creates_no_cycle(demo: DemoOrg) -> None:
    _drop_department_employees(demo, "internal_service")
    for scope in ([], [demo.department_of_type("internal_service")]):
        with pytest.raises(InvalidInput) as err:
            launch(demo.url, "internal-service", PERIOD, scope)
        [problem] = err.value.problems
        assert problem.field == "scope"
        assert "no active employees in scope" in problem.message
    assert count(demo.url, Cycle) == 0


def test_a_launch_of_a_policy_that_fails_its_checks_names_file_line_and_field(
    demo: DemoOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = _break_a_weight(tmp_path / "policies", monkeypatch)
    line = (
        broken.read_text(encoding="utf-8")
        .splitlines()
        .index("categories:  # weights in percent of the total; they sum to 100")
        + 1
    )
    with pytest.raises(InvalidInput) as err:
        launch(demo.url, "external-service", PERIOD)
    [problem] = err.value.problems
    assert (problem.file, problem.line, problem.field) == (str(broken), line, "categories")
    assert problem.message == "weights sum to 95, must be 100"
    assert count(demo.url, Cycle) == 0
    # The other policies in the folder still launch.
    assert launch(demo.url, "internal-service", PERIOD) > 0


# ---------------------------------------------------------------- 7. PostgreSQL


@pytest.mark.postgres
def test_the_same_cycle_on_postgresql_gives_the_same_results(
    demo: DemoOrg, finished: dict[str, Finished], pg_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "pg"
    folder.mkdir()
    prepare_demo_org(pg_url, folder)
    on_sqlite = finished_copy(finished["external-service"], demo)
    on_postgres = launch(pg_url, "external-service", PERIOD)
    sqlite_waits = finished["external-service"].waits
    postgres_waits = play_whole_cycle(pg_url, on_postgres).waits

    assert postgres_waits == sqlite_waits
    expected = _results(demo.url, on_sqlite)
    got = _results(pg_url, on_postgres)
    assert got.keys() == expected.keys()
    for employee, (total, grade, categories) in expected.items():
        assert got[employee][0] == pytest.approx(total, rel=1e-12), employee
        assert got[employee][1] == grade, employee
        assert got[employee][2] == pytest.approx(categories, rel=1e-12), employee
    with session_scope(pg_url) as session:
        assert engine.get_cycle(session, on_postgres).state == "completed"
        assert audit.verify(session).ok


def _results(url: str, cycle_id: int) -> dict[str, tuple[float, str, dict[str, float]]]:
    with session_scope(url) as session:
        return {
            r.employee_id: (r.total, r.grade, r.categories)
            for r in session.scalars(select(Result).where(Result.cycle_id == cycle_id))
        }


# ---------------------------------------------------------------- 8. audit tampering


def _mid_chain_event(url: str) -> int:
    """An event from the middle of the chain: the first results.computed one."""
    [first, *_] = audit_actions(url, "results.computed")
    return first.id


def test_an_altered_audit_row_is_named_by_verify(
    demo: DemoOrg, finished: dict[str, Finished]
) -> None:
    finished_copy(finished["internal-service"], demo)
    target = _mid_chain_event(demo.url)
    raw = get_engine(demo.url)
    with pytest.raises(DBAPIError, match="append-only"), raw.begin() as conn:
        conn.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"), {"id": target}
        )

    with raw.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_no_update"))
        conn.execute(
            text("UPDATE audit_events SET after = :after WHERE id = :id"),
            {"after": json.dumps({"count": 1, "grade_distribution": {}}), "id": target},
        )
    with session_scope(demo.url) as session:
        report = audit.verify(session)
    assert (report.ok, report.broken_id) == (False, target)
    assert "altered" in report.problem
    assert report.checked == target - 1


def test_a_deleted_audit_row_is_detected(demo: DemoOrg, finished: dict[str, Finished]) -> None:
    finished_copy(finished["internal-service"], demo)
    target = _mid_chain_event(demo.url)
    raw = get_engine(demo.url)
    with pytest.raises(DBAPIError, match="append-only"), raw.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": target})

    with raw.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": target})
    with session_scope(demo.url) as session:
        report = audit.verify(session)
    assert (report.ok, report.broken_id) == (False, target + 1)
    assert "deleted" in report.problem
