"""The `perfcycle` command line as scripts and operators use it: exit codes, output shapes, errors.

Each test runs perfcycle.cli.main.main in-process against the demo organisation in its own SQLite
file: a copy of one built per module, with or without a finished cycle.
The --json shapes and the CSV columns are a contract (integrations parse them).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from perfcycle.cli.main import main, print_results_csv
from perfcycle.core import db
from perfcycle.core.db import get_engine, session_scope
from perfcycle.core.settings import REPO_ROOT, get_settings
from perfcycle.domain import engine
from perfcycle.domain.models import (
    AuditEvent,
    Cycle,
    Evaluation,
    Goal,
    Participant,
    RaterAssignment,
    Result,
)
from perfcycle.domain.policy.snapshot import cycle_policy
from perfcycle.domain.stages.evaluation import items_for
from tests.support import databases
from tests.support.cycle import (
    DemoOrg,
    launch,
    play_until_waiting_at,
    play_whole_cycle,
    prepare_demo_org,
    run_until_wait,
    table_rows,
)

PERIOD = "2026-Q4"
STATUS_KEYS = {"id", "policy", "period", "state", "stages"}
STAGE_KEYS = {"name", "state", "due_at", "done", "total"}
RESULT_KEYS = {"employee_id", "indicators", "categories", "total", "grade"}


def _forget_connections() -> None:
    # The CLI opens session_scope() without a URL; its engine and sessionmaker are cached under
    # that None key, so a previous test's database would otherwise still answer.
    get_settings.cache_clear()
    db._sessionmaker.cache_clear()
    get_engine.cache_clear()


@dataclass(frozen=True)
class Built:
    """Databases built once per module, copied into each test that starts from them."""

    org: DemoOrg  # the demo organisation, no cycle yet
    finished_url: str  # the same, plus one finished internal-service cycle
    finished_id: int


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sqlite_template: str) -> Iterator[Built]:
    folder = tmp_path_factory.mktemp("cli")
    org_url = databases.copy_sqlite(sqlite_template, folder / "org.db")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PERFCYCLE_HOME", str(folder))
        org = prepare_demo_org(org_url, folder)
        env.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
        _forget_connections()
        finished_url = databases.copy_sqlite(org_url, folder / "finished.db")
        cycle_id = launch(finished_url, "internal-service", PERIOD)
        play_whole_cycle(finished_url, cycle_id)
    _forget_connections()
    yield Built(org, finished_url, cycle_id)


def _configure(
    source_url: str, built: Built, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> DemoOrg:
    """A copy of `source_url` at `db_url` (this test's own file), set up as the CLI's database."""
    databases.copy_sqlite(source_url, databases.sqlite_path(db_url))
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", built.org.tickets_url)
    monkeypatch.setenv("PERFCYCLE_DATABASE_URL", db_url)
    # Nothing listens there: a command tested here that reached for Prefect would fail loudly.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    _forget_connections()
    return replace(built.org, url=db_url)


@pytest.fixture
def demo(built: Built, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoOrg]:
    """The demo organisation in the database the CLI is configured with."""
    yield _configure(built.org.url, built, db_url, monkeypatch)
    _forget_connections()


@pytest.fixture
def finished(
    built: Built, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DemoOrg, int]]:
    """The demo organisation with one finished internal-service cycle of PERIOD, and its id."""
    yield _configure(built.finished_url, built, db_url, monkeypatch), built.finished_id
    _forget_connections()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


def count_cycles(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Cycle)) or 0


# ---------------------------------------------------------------- cycle list / status


def test_cycle_list_json_is_newest_first(
    finished: tuple[DemoOrg, int], capsys: pytest.CaptureFixture[str]
) -> None:
    demo, older = finished
    newer = launch(demo.url, "professional-support", "2026-11")

    rows = run_json(capsys, "cycle", "list", "--json")

    assert [r["id"] for r in rows] == [newer, older]
    assert all({"id", "policy", "period", "state"} <= set(r) for r in rows)
    assert [(r["policy"], r["period"], r["state"]) for r in rows] == [
        ("professional-support", "2026-11", "running"),
        ("internal-service", PERIOD, "completed"),
    ]


def test_cycle_status_json_shape_for_a_finished_and_a_running_cycle(
    finished: tuple[DemoOrg, int], capsys: pytest.CaptureFixture[str]
) -> None:
    demo, done = finished
    running = launch(demo.url, "professional-support", PERIOD)
    run_until_wait(demo.url, running)

    status = run_json(capsys, "cycle", "status", str(done), "--json")
    assert set(status) >= STATUS_KEYS
    assert (status["id"], status["policy"], status["period"], status["state"]) == (
        done,
        "internal-service",
        PERIOD,
        "completed",
    )
    with session_scope(demo.url) as session:
        policy = cycle_policy(engine.get_cycle(session, done))
    assert [s["name"] for s in status["stages"]] == [s.name for s in policy.stages]
    for stage in status["stages"]:
        assert set(stage) >= STAGE_KEYS
        assert stage["state"] == "completed"
        assert datetime.fromisoformat(stage["due_at"]).tzinfo is not None
        assert isinstance(stage["done"], int) and isinstance(stage["total"], int)
        assert stage["done"] <= stage["total"]

    status = run_json(capsys, "cycle", "status", str(running), "--json")
    first, *later = status["stages"]
    assert (first["name"], first["state"], first["done"], first["total"]) == (
        "target_setting",
        "open",
        0,
        sum(1 for r in demo.rows if r["department_type"] == "professional_support"),
    )
    assert {(s["state"], s["due_at"]) for s in later} == {("pending", None)}


@pytest.mark.usefixtures("demo")
def test_status_and_results_of_an_unknown_cycle_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["cycle", "status", "999", "--json"], ["results", "999", "--json"]):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, "")
        assert "no cycle with id 999" in err


# ---------------------------------------------------------------- results


def test_results_json_one_object_per_employee(
    finished: tuple[DemoOrg, int], capsys: pytest.CaptureFixture[str]
) -> None:
    demo, cycle_id = finished

    rows = run_json(capsys, "results", str(cycle_id), "--json")

    with session_scope(demo.url) as session:
        policy = cycle_policy(engine.get_cycle(session, cycle_id))
        participants = set(
            session.scalars(select(Participant.employee_id).where(Participant.cycle_id == cycle_id))
        )
        stored = {
            r.employee_id: (r.total, r.grade)
            for r in session.scalars(select(Result).where(Result.cycle_id == cycle_id))
        }
        personal: dict[str, set[str]] = {}
        for employee_id, goal_id in session.execute(
            select(Goal.employee_id, Goal.indicator_id).where(
                Goal.cycle_id == cycle_id, Goal.kind == "personal"
            )
        ):
            personal.setdefault(employee_id, set()).add(goal_id)
    assert isinstance(rows, list)
    assert personal, "the demo adds personal goals for some people"
    assert sorted(r["employee_id"] for r in rows) == sorted(participants)
    for row in rows:
        assert set(row) >= RESULT_KEYS
        own = personal.get(row["employee_id"], set())
        assert set(row["indicators"]) == {i.id for i in policy.indicators} | own
        assert set(row["categories"]) == {c.id for c in policy.categories}
        assert all(isinstance(v, int | float) for v in row["categories"].values())
        assert (row["total"], row["grade"]) == stored[row["employee_id"]]
        assert row["grade"] in policy.grade_ids()


def test_results_csv_has_a_row_per_employee(
    finished: tuple[DemoOrg, int], capsys: pytest.CaptureFixture[str]
) -> None:
    demo, cycle_id = finished
    as_json = {r["employee_id"]: r for r in run_json(capsys, "results", str(cycle_id), "--json")}

    code, out, err = run(capsys, "results", str(cycle_id), "--csv")

    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["employee_id"] for r in rows) == sorted(as_json)
    for row in rows:
        expected = as_json[row["employee_id"]]
        assert float(row["total"]) == pytest.approx(expected["total"])
        assert row["grade"] == expected["grade"]
        for category, score in expected["categories"].items():
            assert float(row[f"category:{category}"]) == pytest.approx(score)


# ---------------------------------------------------------------- audit


def test_audit_verify_passes_then_names_the_altered_row(
    finished: tuple[DemoOrg, int], capsys: pytest.CaptureFixture[str]
) -> None:
    demo, _ = finished
    code, out, _ = run(capsys, "audit", "verify")
    assert code == 0
    assert "audit chain OK" in out

    with session_scope(demo.url) as session:
        target = session.scalars(
            select(AuditEvent.id).where(AuditEvent.action == "results.computed")
        ).first()
    assert target is not None
    with get_engine(demo.url).begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_no_update"))
        conn.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"), {"id": target}
        )

    code, out, err = run(capsys, "audit", "verify")
    assert code == 1
    assert f"audit_events.id={target}" in err


# ---------------------------------------------------------------- org import


def test_org_import_of_a_bad_csv_exits_2_with_line_numbers_and_changes_nothing(
    demo: DemoOrg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = demo.org_csv.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace("@example.com", "")  # line 3: an email without a domain
    lines[5] = re.sub(r",E\d{4},", ",E9999,", lines[5])  # line 6: a manager nobody knows
    bad = tmp_path / "bad-org.csv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = table_rows(demo.url)

    code, out, err = run(capsys, "org", "import", str(bad))

    assert (code, out) == (2, "")
    assert f"{bad}:3: email:" in err
    assert f"{bad}:6: manager_id: manager E9999" in err
    assert table_rows(demo.url) == before

    code, out, err = run(capsys, "org", "import", str(demo.org_csv))
    assert code == 0, err
    assert out.startswith(f"Imported {demo.org_csv}")


# ---------------------------------------------------------------- policy check


def test_policy_check_passes_a_good_file_and_points_at_the_line_of_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = REPO_ROOT / "policies" / "internal-service.yaml"
    source = (REPO_ROOT / "policies" / "external-service.yaml").read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    lines[lines.index("    weight: 45\n")] = "    weight: 40\n"
    bad = tmp_path / "external-service.yaml"
    bad.write_text("".join(lines), encoding="utf-8")
    categories_line = next(n for n, line in enumerate(lines, 1) if line.startswith("categories:"))

    code, out, err = run(capsys, "policy", "check", str(good))
    assert (code, err) == (0, "")
    assert out.startswith(f"OK {good}")

    code, out, err = run(capsys, "policy", "check", str(bad), str(good))
    assert code == 1
    assert f"OK {good}" in out  # every file is checked, not just up to the first bad one
    assert err.splitlines() == [
        f"{bad}:{categories_line}: categories: weights sum to 95, must be 100"
    ]


# ---------------------------------------------------------------- evaluations import


def test_evaluations_import_enters_paper_forms(
    demo: DemoOrg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle_id = launch(demo.url, "internal-service", PERIOD)
    play_until_waiting_at(demo.url, cycle_id, "evaluation")
    with session_scope(demo.url) as session:
        policy = cycle_policy(engine.get_cycle(session, cycle_id))
        forms = session.scalars(
            select(RaterAssignment)
            .where(RaterAssignment.cycle_id == cycle_id)
            .order_by(RaterAssignment.id)
            .limit(2)
        ).all()
    path = tmp_path / "paper-forms.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["rater_id", "ratee_id", "rater_type", "item", "score", "comment"])
        for form in forms:
            for item in items_for(policy, form.rater_type):
                writer.writerow(
                    [form.rater_id, form.ratee_id, form.rater_type, item.id, 3, "paper form"]
                )

    code, out, err = run(capsys, "evaluations", "import", str(path), "--cycle", str(cycle_id))

    assert code == 0, err
    assert out.strip() == f"Imported 2 evaluations into cycle {cycle_id}"
    with session_scope(demo.url) as session:
        ids = [f.id for f in forms]
        states = session.scalars(
            select(RaterAssignment.state).where(RaterAssignment.id.in_(ids))
        ).all()
        scores = session.scalars(
            select(Evaluation.score).where(Evaluation.assignment_id.in_(ids))
        ).all()
    assert states == ["submitted", "submitted"]
    assert scores and set(scores) == {3}
    status = run_json(capsys, "cycle", "status", str(cycle_id), "--json")
    evaluation = next(s for s in status["stages"] if s["name"] == "evaluation")
    assert evaluation["done"] == 2


# ---------------------------------------------------------------- cycle launch


def test_cycle_launch_with_an_invalid_period_exits_2_before_reaching_prefect(
    demo: DemoOrg, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "cycle", "launch", "--policy", "internal-service", "--period", "2026-Q5"
    )

    assert (code, out) == (2, "")
    assert "period: '2026-Q5' is not a period" in err
    assert count_cycles(demo.url) == 0


def test_results_csv_cells_never_run_as_spreadsheet_formulas() -> None:
    """Text from the org chart or a policy that a spreadsheet would run as a formula is written
    as text; numbers, negative ones included, stay numbers."""
    rows = [
        {
            "employee_id": "=HYPERLINK(\"http://evil.example\",\"x\")",
            "indicators": {"+sat": -2.5},
            "categories": {"@result": 80.0},
            "total": 80.0,
            "grade": "-A",
        }
    ]
    out = io.StringIO()
    print_results_csv(rows, out)
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert header == ["employee_id", "indicator:+sat", "category:@result", "total", "grade"]
    assert row == ["'=HYPERLINK(\"http://evil.example\",\"x\")", "-2.5", "80.0", "80.0", "'-A"]
