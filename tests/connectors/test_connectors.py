"""Connectors against the demo ticket system, CSV sources, and the data-collection stage.

Every query of every shipped policy is run through collect() and each value is checked against
an independent computation in Python over the same tickets.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from perfcycle.connectors.sources import SourceUnavailable, collect
from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.devtools.demo_data import generate_tickets, sample_org
from perfcycle.domain.access import Actor
from perfcycle.domain.models import (
    AuditEvent,
    Cycle,
    Department,
    Employee,
    MetricValue,
    Participant,
    StageInstance,
)
from perfcycle.domain.policy.loader import load_policy
from perfcycle.domain.policy.schema import CsvSource, Policy, SqlSource
from perfcycle.domain.stages import data_collection
from perfcycle.domain.stages.base import StageContext
from perfcycle.domain.stages.data_collection import HR_IMPORT, import_metrics_csv, needed_metrics

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
START, END = date(2026, 10, 1), date(2026, 12, 31)
ENV = "PERFCYCLE_TICKETS_URL"


@pytest.fixture(scope="module")
def org() -> list[dict[str, str]]:
    return sample_org()


@pytest.fixture(scope="module")
def tickets_url(tmp_path_factory: pytest.TempPathFactory, org: list[dict[str, str]]) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('tickets')}/tickets.db"
    generate_tickets(url, org, START, END)
    return url


@pytest.fixture
def tickets_env(tickets_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV, tickets_url)
    return tickets_url


def _sql(*queries: str, url: str = "${" + ENV + "}", id: str = "tickets") -> SqlSource:
    return SqlSource(kind="sql", id=id, url=url, queries=list(queries))


# ---------------------------------------------------------------- independent computation


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def _tickets_by_assignee(url: str, start: date, end: date) -> dict[str, list[dict[str, Any]]]:
    lo = datetime.combine(start, datetime.min.time())
    hi = datetime.combine(end + timedelta(days=1), datetime.min.time())
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM tickets")]
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if lo <= _ts(r["opened_at"]) < hi:
            out.setdefault(r["assignee"], []).append(r)
    return out


def _hours(later: str, earlier: str) -> float:
    return (_ts(later) - _ts(earlier)).total_seconds() / 3600


def expected_metrics(tickets: list[dict[str, Any]]) -> dict[str, float]:
    """The metric definitions the policies promise, computed ticket by ticket."""
    n = len(tickets)
    resolved = [t for t in tickets if t["resolved_at"]]
    answered = [t["satisfaction"] for t in tickets if t["satisfaction"] is not None]
    complaints = [t for t in tickets if t["complaint"]]
    reopened = sum(t["reopened"] for t in tickets)
    out = {
        "first_response_minutes": mean(
            60 * _hours(t["first_response_at"], t["opened_at"]) for t in tickets
        ),
        "sla_resolution_pct": 100
        * sum(_hours(t["resolved_at"], t["opened_at"]) <= t["sla_hours"] for t in resolved)
        / n,
        "fcr_pct": 100 * sum(not t["reopened"] for t in resolved) / n,
        "complaint_rate_pct": 100 * len(complaints) / n,
        "complaint_timeliness_pct": 100
        * sum(
            bool(t["complaint_handled_at"])
            and _hours(t["complaint_handled_at"], t["opened_at"]) <= 24
            for t in complaints
        )
        / len(complaints)
        if complaints
        else 100.0,
        "major_incidents": float(sum(t["major_incident"] for t in tickets)),
        "accuracy_pct": 100 - 100 * reopened / n,
    }
    if resolved:
        out["resolution_hours"] = mean(_hours(t["resolved_at"], t["opened_at"]) for t in resolved)
    if answered:
        out["satisfaction_pct"] = 100 * sum(s >= 4 for s in answered) / len(answered)
    return out


# ---------------------------------------------------------------- shipped policies' queries


def test_policies_are_shipped() -> None:
    assert [p.name for p in POLICIES] == [
        "external-service.yaml",
        "internal-service.yaml",
        "professional-support.yaml",
    ]


@pytest.mark.parametrize("policy_file", POLICIES, ids=lambda p: p.stem)
def test_every_shipped_query_matches_an_independent_computation(
    policy_file: Path, tickets_env: str, org: list[dict[str, str]]
) -> None:
    policy = load_policy(policy_file)
    employees = {r["employee_id"] for r in org}
    result = collect(policy.sources, START, END, employees)
    by_assignee = _tickets_by_assignee(tickets_env, START, END)
    expected = {
        (emp, metric): value
        for emp, tickets in by_assignee.items()
        for metric, value in expected_metrics(tickets).items()
    }
    got = {(r.employee_id, r.metric): r for r in result.rows}
    produced = {m for _, m in got}
    # Each query yields its own metric: all of them ran and returned rows.
    queries = [q for s in policy.sources if isinstance(s, SqlSource) for q in s.queries]
    assert len(produced) == len(queries)
    assert set(needed_metrics(policy)) <= produced
    assert set(got) == {k for k in expected if k[1] in produced}
    for key, row in got.items():
        assert row.value == pytest.approx(expected[key], rel=1e-9, abs=1e-9), key
        assert row.source == "tickets"
        assert row.evidence["period_start"] == "2026-10-01"
        assert row.evidence["period_end"] == "2026-12-31"
        assert row.evidence["source"] == "tickets"
    assert result.counts == {"tickets": len(got)}
    # Department heads and the GM handle no tickets: they are what HR must supply.
    assert {e for e, _ in got} == set(by_assignee)
    assert len(employees - set(by_assignee)) == 4


def test_the_window_is_end_exclusive(tmp_path: Path) -> None:
    policy = load_policy(POLICIES[0])
    url = f"sqlite:///{tmp_path}/edge.db"
    generate_tickets(url, [], START, END)
    edge = [
        ("T-1", "2026-09-30 23:59:59"),  # before the period
        ("T-2", "2026-10-01 00:00:00"),  # first second: in
        ("T-3", "2026-12-31 23:59:59"),  # last second: in
        ("T-4", "2027-01-01 00:00:00"),  # the day after: out
    ]
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        conn.executemany(
            "INSERT INTO tickets (id, queue, assignee, opened_at, first_response_at, resolved_at,"
            " sla_hours, satisfaction, complaint, complaint_handled_at, reopened, major_incident)"
            " VALUES (?, 'CS', 'E9', ?, ?, NULL, 4, 5, 1, NULL, 0, 1)",
            [(i, at, at) for i, at in edge],
        )
    source = policy.sources[0]
    assert isinstance(source, SqlSource)
    result = collect([source.model_copy(update={"url": url})], START, END, {"E9"})
    values = {r.metric: r for r in result.rows}
    assert values["major_incidents"].value == 2
    assert values["major_incidents"].evidence["first_incident"] == "T-2"
    assert values["major_incidents"].evidence["last_incident"] == "T-3"
    assert values["complaint_rate_pct"].evidence["tickets"] == 2


# ---------------------------------------------------------------- sql errors


def test_missing_environment_variable_names_source_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_TICKETS_DB", raising=False)
    source = _sql("SELECT 1", url="sqlite:///${NO_SUCH_TICKETS_DB}")
    with pytest.raises(InvalidInput) as err:
        collect([source], START, END, {"E1"})
    (problem,) = err.value.problems
    assert problem.field == "sources.0.url"
    assert "'tickets'" in problem.message and "NO_SUCH_TICKETS_DB is not set" in problem.message


def test_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(InvalidInput, match="absent.db does not exist"):
        collect([_sql("SELECT 1", url=f"sqlite:///{path}")], START, END, {"E1"})
    assert not path.exists()


@pytest.mark.usefixtures("tickets_env")
def test_wrong_columns_name_source_query_and_column() -> None:
    good = (
        "SELECT assignee AS employee_id, 'x' AS metric, 1 AS value, NULL AS evidence FROM tickets"
    )
    bad = "SELECT assignee AS employee_id, 'x' AS metric, 1 AS amount FROM tickets"
    with pytest.raises(InvalidInput) as err:
        collect([_sql(good, bad)], START, END, {"E0010"})
    (problem,) = err.value.problems
    assert problem.field == "sources.0.queries.1"
    assert "'tickets' query 1" in problem.message
    assert "no column value, evidence" in problem.message


@pytest.mark.usefixtures("tickets_env")
def test_failing_query_and_bad_values_are_reported_together() -> None:
    queries = [
        "SELECT * FROM no_such_table",
        "SELECT 'E0010' AS employee_id, 'm' AS metric, 'abc' AS value, NULL AS evidence",
        "SELECT 'E0010' AS employee_id, 'n' AS metric, 1 AS value, '[1]' AS evidence",
    ]
    with pytest.raises(InvalidInput) as err:
        collect([_sql(*queries)], START, END, {"E0010"})
    problems = err.value.problems
    assert [p.field for p in problems] == [f"sources.0.queries.{i}" for i in range(3)]
    assert "no such table: no_such_table" in problems[0].message
    assert "'abc' is not a number" in problems[1].message
    assert "evidence must be a JSON object" in problems[2].message


@pytest.mark.usefixtures("tickets_env")
def test_null_values_mean_no_data_and_rows_of_others_are_dropped() -> None:
    query = (
        "SELECT 'E0010' AS employee_id, 'a' AS metric, NULL AS value, NULL AS evidence "
        "UNION ALL SELECT 'E0010', 'b', 2.5, '{\"n\": 3}' "
        "UNION ALL SELECT 'E0011', 'b', 7, NULL "
        "UNION ALL SELECT :period_start, :period_end, 0, NULL"
    )
    result = collect([_sql(query)], START, END, {"E0010", "2026-10-01"})
    assert [(r.employee_id, r.metric, r.value) for r in result.rows] == [
        ("2026-10-01", "2027-01-01", 0.0),
        ("E0010", "b", 2.5),
    ]
    assert result.rows[1].evidence == {
        "n": 3,
        "source": "tickets",
        "period_start": "2026-10-01",
        "period_end": "2026-12-31",
        "query": 0,
    }


def test_unreachable_database_is_an_outage_not_bad_input() -> None:
    source = _sql("SELECT 1", url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(SourceUnavailable, match="'tickets': cannot connect"):
        collect([source], START, END, {"E1"})


# ---------------------------------------------------------------- csv sources


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.usefixtures("tickets_env")
def test_csv_source_relative_to_cwd_overrides_earlier_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    _write(
        tmp_path / "data" / "manual.csv",
        "employee_id,metric,value,evidence\n"
        'E0010,satisfaction_pct,88.5,"{""note"": ""survey re-run""}"\n'
        "E0002,satisfaction_pct,90,\n"
        "E0999,satisfaction_pct,10,\n",
    )
    sql = load_policy(POLICIES[0]).sources[0]
    csv_source = CsvSource(kind="csv", id="manual", path="data/manual.csv")
    result = collect([sql, csv_source], START, END, {"E0010", "E0002"})
    rows = {(r.employee_id, r.metric): r for r in result.rows}
    override = rows[("E0010", "satisfaction_pct")]
    assert (override.value, override.source) == (88.5, "manual")
    assert override.evidence["note"] == "survey re-run"
    assert override.evidence["file"] == "data/manual.csv" and override.evidence["line"] == 2
    assert override.evidence["overrides"]["source"] == "tickets"
    assert override.evidence["overrides"]["query"] == 0
    assert rows[("E0002", "satisfaction_pct")].value == 90
    assert "overrides" not in rows[("E0002", "satisfaction_pct")].evidence
    assert result.counts["manual"] == 2 and result.overridden == 1
    assert not any(r.employee_id == "E0999" for r in result.rows)


def test_csv_bad_rows_are_all_reported_with_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.csv",
        "employee_id,metric,value,evidence\n"
        "E1,fcr_pct,80,\n"
        "E1,fcr_pct,81,\n"
        ",fcr_pct,abc,\n"
        "E2,sla_pct,inf,\n"
        "\n"
        "E3,sla_pct,nan,{oops}\n"
        "E4,sla_pct\n",
    )
    source = CsvSource(kind="csv", id="manual", path=str(path))
    with pytest.raises(InvalidInput) as err:
        collect([source], START, END, {"E1", "E2", "E3", "E4"})
    got = [(p.file, p.line, p.field) for p in err.value.problems]
    assert got == [
        (str(path), 3, "metric"),
        (str(path), 4, "employee_id"),
        (str(path), 4, "value"),
        (str(path), 5, "value"),
        (str(path), 7, "value"),
        (str(path), 7, "evidence"),
        (str(path), 8, None),
    ]
    messages = [p.message for p in err.value.problems]
    assert "first on line 2" in messages[0]
    assert "'abc' is not a number" in messages[2]
    assert "not a finite number" in messages[3]
    assert "2 fields, the header has 4" in messages[6]
    assert str(err.value).splitlines()[0] == (
        f"{path}:3: metric: second value for E1 fcr_pct (first on line 2)"
    )


def test_csv_values_name_the_line_their_row_starts_on(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "multi.csv",
        "\ufeffEvidence,employee_id,metric,value\n"
        '"{""note"":\n""re-survey""}",E1,fcr_pct,80\n'  # lines 2-3
        ",E2,fcr_pct,81\n"  # 4
        ",E3,fcr_pct,\n",  # 5
    )
    source = CsvSource(kind="csv", id="manual", path=str(path))
    with pytest.raises(InvalidInput) as err:
        collect([source], START, END, {"E1", "E2", "E3"})
    assert [str(p) for p in err.value.problems] == [f"{path}:5: value: value is required"]

    path.write_text(path.read_text(encoding="utf-8").replace(",E3,fcr_pct,\n", ""))
    rows = {r.employee_id: r for r in collect([source], START, END, {"E1", "E2"}).rows}
    assert rows["E1"].evidence["note"] == "re-survey" and rows["E1"].evidence["line"] == 2
    assert rows["E2"].evidence["line"] == 4


def test_csv_header_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", "employee,metric,valeu\nE1,x,1\n")
    with pytest.raises(InvalidInput) as err:
        collect([CsvSource(kind="csv", id="m", path=str(path))], START, END, {"E1"})
    assert {(p.line, p.field) for p in err.value.problems} == {
        (1, "employee_id"),
        (1, "value"),
        (1, "employee"),
        (1, "valeu"),
    }
    with pytest.raises(InvalidInput, match="file not found"):
        collect([CsvSource(kind="csv", id="m", path=str(tmp_path / "x.csv"))], START, END, set())


# ---------------------------------------------------------------- postgres


# The shipped queries are SQLite dialect (strftime('%s', ...), json_object(...)); the same metric
# in PostgreSQL's dialect shows the connector itself works there (json evidence, numeric values).
PG_QUERY = """
SELECT assignee AS employee_id, 'first_response_minutes' AS metric,
       AVG(EXTRACT(EPOCH FROM first_response_at::timestamp - opened_at::timestamp)) / 60 AS value,
       json_build_object('tickets', COUNT(*), 'first', MIN(id)) AS evidence
FROM tickets
WHERE opened_at >= :period_start AND opened_at < :period_end
GROUP BY assignee
"""


@pytest.mark.postgres
def test_collect_from_postgres_matches_the_sqlite_ticket_system(
    pg_empty_url: str, tickets_env: str, org: list[dict[str, str]]
) -> None:
    generate_tickets(pg_empty_url, org, START, END)
    employees = {r["employee_id"] for r in org}
    pg = collect([_sql(PG_QUERY, url=pg_empty_url)], START, END, employees)
    by_assignee = _tickets_by_assignee(tickets_env, START, END)
    assert {r.employee_id for r in pg.rows} == set(by_assignee)
    for row in pg.rows:
        expected = expected_metrics(by_assignee[row.employee_id])["first_response_minutes"]
        assert isinstance(row.value, float)
        assert row.value == pytest.approx(expected, rel=1e-9)
        assert row.evidence["tickets"] == len(by_assignee[row.employee_id])
    shipped = load_policy(POLICIES[0]).sources[0]
    assert isinstance(shipped, SqlSource)
    with pytest.raises(InvalidInput, match="function (strftime|json_group_array)"):
        collect([shipped.model_copy(update={"url": pg_empty_url})], START, END, employees)


# ---------------------------------------------------------------- the data-collection stage


@pytest.fixture
def policy() -> Policy:
    return load_policy(POLICIES[0])


@pytest.fixture
def cycle(session: Session, org: list[dict[str, str]]) -> Iterator[Cycle]:
    """A running external-service cycle over the CS department, data collection open."""
    now = datetime(2027, 1, 5, 9, tzinfo=UTC)
    for dept in {(r["department_id"], r["department_name"], r["department_type"]) for r in org}:
        session.add(Department(id=dept[0], name=dept[1], type=dept[2]))
    session.flush()
    for r in org:
        session.add(
            Employee(
                id=r["employee_id"],
                name=r["name"],
                email=r["email"],
                department_id=r["department_id"],
                manager_id=r["manager_id"] or None,
                locale=r["locale"],
            )
        )
        session.flush()
    cycle = Cycle(
        policy="external-service",
        policy_digest="x",
        period="2026-Q4",
        period_start=START,
        period_end=END,
        scope_key="CS",
        start_date=now.date(),
        created_at=now,
    )
    session.add(cycle)
    session.flush()
    for r in org:
        if r["department_id"] == "CS":
            session.add(
                Participant(
                    cycle_id=cycle.id,
                    employee_id=r["employee_id"],
                    department_id="CS",
                    manager_id=r["manager_id"] or None,
                )
            )
    session.add(
        StageInstance(
            cycle_id=cycle.id,
            name="data_collection",
            position=2,
            opened_at=now,
            due_at=now + timedelta(days=5),
        )
    )
    session.commit()
    yield cycle


def _stage(session: Session, cycle: Cycle) -> StageInstance:
    return session.scalars(select(StageInstance).where(StageInstance.cycle_id == cycle.id)).one()


def _values(session: Session) -> dict[tuple[str, str], tuple[float, str]]:
    return {
        (e, m): (v, s)
        for e, m, v, s in session.execute(
            select(
                MetricValue.employee_id, MetricValue.metric, MetricValue.value, MetricValue.source
            )
        ).tuples()
    }


def _audit(session: Session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.mark.usefixtures("tickets_env")
def test_stage_collects_converges_and_reports_what_is_missing(
    session: Session, cycle: Cycle, policy: Policy
) -> None:
    handler = data_collection.Handler()
    stage = _stage(session, cycle)
    summary = handler.enter(StageContext(session, cycle, policy, stage))
    session.commit()
    collected = collect(policy.sources, START, END, {p for p in _participants(session, cycle)})
    assert summary == {
        "metric_values": len(collected.rows),
        "sources": {"tickets": len(collected.rows)},
        "inserted": len(collected.rows),
        "updated": 0,
    }
    first = _values(session)
    assert len(first) == len(collected.rows)
    assert len(_audit(session, "metrics.collected")) == 1

    # 20 CS people x 7 metrics; the GM and the CS head have no tickets.
    needed = needed_metrics(policy)
    assert len(needed) == 7
    progress = handler.progress(StageContext(session, cycle, policy, stage))
    assert (progress.total, progress.done) == (140, 140 - 2 * 7)
    closed = handler.close(StageContext(session, cycle, policy, stage))
    assert closed["missing_count"] == 14
    assert closed["missing"][:2] == ["E0001:complaint_rate_pct", "E0001:complaint_timeliness_pct"]

    # A re-run changes nothing and records nothing.
    again = handler.enter(StageContext(session, cycle, policy, stage))
    session.commit()
    assert (again["inserted"], again["updated"]) == (0, 0)
    assert _values(session) == first
    assert len(_audit(session, "metrics.collected")) == 1


def test_stage_rerun_picks_up_changed_source_data(
    session: Session,
    cycle: Cycle,
    policy: Policy,
    tmp_path: Path,
    org: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path}/tickets.db"
    generate_tickets(url, org, START, END)
    monkeypatch.setenv(ENV, url)
    handler = data_collection.Handler()
    stage = _stage(session, cycle)
    handler.enter(StageContext(session, cycle, policy, stage))
    session.commit()
    with sqlite3.connect(tmp_path / "tickets.db") as conn:
        conn.execute(
            "UPDATE tickets SET major_incident = 1 WHERE id = (SELECT MIN(id) FROM tickets"
            " WHERE assignee = 'E0026' AND opened_at >= '2026-10-01' AND major_incident = 0)"
        )
    before = _values(session)[("E0026", "major_incidents")][0]
    summary = handler.enter(StageContext(session, cycle, policy, stage))
    session.commit()
    assert summary["updated"] == 1 and summary["inserted"] == 0
    assert _values(session)[("E0026", "major_incidents")] == (before + 1, "tickets")
    (latest,) = _audit(session, "metrics.collected")[-1:]
    assert latest.after is not None and latest.after["updated"] == 1


def _participants(session: Session, cycle: Cycle) -> list[str]:
    return list(
        session.scalars(select(Participant.employee_id).where(Participant.cycle_id == cycle.id))
    )


@pytest.mark.usefixtures("tickets_env")
def test_hr_supplies_missing_values_by_csv_and_they_survive_a_rerun(
    session: Session, cycle: Cycle, policy: Policy, tmp_path: Path
) -> None:
    handler = data_collection.Handler()
    stage = _stage(session, cycle)
    handler.enter(StageContext(session, cycle, policy, stage))
    session.commit()
    lines = ["employee_id,metric,value,evidence"]
    for employee in ("E0001", "E0002"):
        lines += [f"{employee},{metric},0," for metric in needed_metrics(policy)]
    # A correction of a collected value, too.
    lines.append('E0026,satisfaction_pct,99,"{""basis"": ""re-survey""}"')
    path = _write(tmp_path / "supplied.csv", "\n".join(lines) + "\n")

    written = import_metrics_csv(session, cycle, policy, path, Actor.hr("hr-admin"))
    session.commit()
    assert written == 15
    assert handler.progress(StageContext(session, cycle, policy, stage)).complete
    closed = handler.close(StageContext(session, cycle, policy, stage))
    assert closed == {"missing": [], "missing_count": 0}
    (event,) = _audit(session, "metrics.imported")
    assert event.actor == "hr-admin" and event.after is not None
    assert event.after["inserted"] == 14 and event.after["updated"] == 1
    assert event.before is not None and list(event.before) == ["E0026:satisfaction_pct"]
    evidence = session.scalars(
        select(MetricValue.evidence).where(
            MetricValue.employee_id == "E0026", MetricValue.metric == "satisfaction_pct"
        )
    ).one()
    assert evidence["basis"] == "re-survey" and evidence["supplied_by"] == "hr-admin"
    assert evidence["line"] == 16

    handler.enter(StageContext(session, cycle, policy, stage))
    session.commit()
    assert _values(session)[("E0026", "satisfaction_pct")] == (99.0, HR_IMPORT)
    # The same file again changes nothing.
    assert import_metrics_csv(session, cycle, policy, path, Actor.hr("hr-admin")) == 0


def test_bad_metric_import_changes_nothing(
    session: Session, cycle: Cycle, policy: Policy, tmp_path: Path
) -> None:
    path = _write(
        tmp_path / "bad.csv",
        "employee_id,metric,value\nE0001,fcr_pct,80\nE0003,fcr_pct,80\nE0001,speed,1\nE0002,fcr_pct,x\n",
    )
    with pytest.raises(InvalidInput) as err:
        import_metrics_csv(session, cycle, policy, path, Actor.hr("hr-admin"))
    assert [(p.file, p.line, p.field) for p in err.value.problems] == [
        (str(path), 3, "employee_id"),
        (str(path), 4, "metric"),
        (str(path), 5, "value"),
    ]
    assert "E0003 is not a participant" in err.value.problems[0].message
    assert "uses no metric 'speed'" in err.value.problems[1].message
    assert session.scalar(select(func.count()).select_from(MetricValue)) == 0
    assert _audit(session, "metrics.imported") == []


def test_import_after_data_collection_closed_is_refused(
    db_url: str, cycle: Cycle, policy: Policy, tmp_path: Path
) -> None:
    path = _write(tmp_path / "late.csv", "employee_id,metric,value\nE0001,fcr_pct,80\n")
    with session_scope(db_url) as session:
        session.execute(
            update(StageInstance)
            .where(StageInstance.cycle_id == cycle.id)
            .values(state="completed", closed_at=datetime(2027, 1, 10, 9, tzinfo=UTC))
        )
    with session_scope(db_url) as session, pytest.raises(InvalidInput) as err:
        import_metrics_csv(session, session.merge(cycle), policy, path, Actor.hr("hr-admin"))
    assert "closed at 2027-01-10 09:00 UTC" in str(err.value)
