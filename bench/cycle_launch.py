"""Launch benchmark: how long from launching a cycle until the evaluation stage waits for raters.

    .venv/bin/python bench/cycle_launch.py --employees 10000 [--database-url URL]
        [--raters service_recipient=2 peer=1 ...] [--json] [--keep]

Set-up, not timed: a fresh database (PostgreSQL `perfcycle_bench` at 127.0.0.1:5432 unless
--database-url names another; it is dropped and re-created), the schema, a sample organisation
of N people in three departments, a metrics CSV with every value the policy needs, and a bench
policy derived from policies/external-service.yaml (stages data_collection, evaluation,
calibration; a `csv` source; all department types, so all N people take part). Then a real
Prefect server (perfcycle.devtools.devstack.Stack) and the review-cycle/launch deployment.

Timed: from creating the flow run from the deployment to the run being Suspended at the
evaluation stage. The run executes in this process (prefect.flow_engine.run_flow), so the peak
memory reported is the engine's. Then: rows written per table, rater assignments, the
evaluation_assigned mails in the outbox, and the task runs the flow run created (the claim: a
fixed number, whatever the headcount).

Everything is removed at the end (database, temporary folder) unless --keep.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: flows/ and tasks/ import
    sys.path.insert(0, str(REPO))

from sqlalchemy import func, inspect, select, table  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from perfcycle.core.errors import InvalidInput  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/perfcycle_bench"
BASE_POLICY = REPO / "policies" / "external-service.yaml"
POLICY_NAME = "bench-launch"
STAGES = ("data_collection", "evaluation", "calibration")
ALL_DEPARTMENT_TYPES = ["external_service", "internal_service", "professional_support"]
PERIOD = "2026-Q4"
TASK_RUNS_SETTLE_S = 2.0
TASK_RUNS_WAIT_S = 30.0


class BenchError(RuntimeError):
    """The benchmark cannot run as asked; the message says why."""


# ---------------------------------------------------------------- set-up (not timed)


def admin_dsn(url: str) -> str:
    """libpq DSN of the `postgres` maintenance database on the bench database's server."""
    parsed = make_url(url).set(drivername="postgresql", database="postgres")
    return parsed.render_as_string(hide_password=False)


def check_bench_url(url: str) -> None:
    """The bench drops its database: only accept one whose name says it is a bench."""
    parsed = make_url(url)
    name = Path(parsed.database or "").name
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise BenchError(f"{parsed.get_backend_name()}: only PostgreSQL and SQLite are supported")
    if "bench" not in name:
        raise BenchError(
            f"refusing to use database {name!r}: the bench drops and re-creates its database, "
            "so its name must contain 'bench' (e.g. .../perfcycle_bench or /tmp/bench.db)"
        )


def fresh_database(url: str) -> None:
    """Drop and re-create the bench database."""
    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    from perfcycle.core.db import get_engine

    get_engine.cache_clear()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path((parsed.database or "") + suffix).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')


def parse_raters(specs: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for spec in specs:
        rater_type, _, count = spec.partition("=")
        if not count.isdigit():
            raise BenchError(f"--raters {spec!r}: expected TYPE=COUNT, e.g. peer=2")
        counts[rater_type] = int(count)
    return counts


def write_policy(folder: Path, metrics_csv: Path, raters: dict[str, int]) -> Path:
    """The shipped external-service policy, cut down to go straight to evaluation."""
    from perfcycle.domain.policy.loader import load_policy

    data = yaml.safe_load(BASE_POLICY.read_text(encoding="utf-8"))
    data["department_types"] = ALL_DEPARTMENT_TYPES
    data["stages"] = [s for s in data["stages"] if s["name"] in STAGES]
    data["sources"] = [{"kind": "csv", "id": "bench_metrics", "path": str(metrics_csv)}]
    for rater_type, count in raters.items():
        if rater_type not in data["raters"]:
            known = ", ".join(data["raters"])
            raise BenchError(f"--raters: unknown rater type {rater_type!r} (known: {known})")
        data["raters"][rater_type]["count"] = count
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{POLICY_NAME}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    load_policy(path)  # the same checks a launch runs: fail here, not inside the timed run
    return path


def _metric_value(metric: str, rng: random.Random) -> float:
    if metric == "major_incidents":
        return 1.0 if rng.random() < 0.01 else 0.0
    if metric == "first_response_minutes":
        return round(rng.uniform(5, 40), 1)
    if metric == "complaint_rate_pct":
        return round(rng.uniform(0, 6), 2)
    return round(rng.uniform(70, 100), 1)


def write_metrics_csv(path: Path, employee_ids: Sequence[str], metrics: Sequence[str]) -> int:
    """Every (employee, metric) the policy scores, so data collection completes at once."""
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["employee_id", "metric", "value"])
        for employee_id in employee_ids:
            for metric in metrics:
                writer.writerow([employee_id, metric, _metric_value(metric, rng)])
    return len(employee_ids) * len(metrics)


def set_up_organisation(url: str, employees: int, folder: str, policy_path: str) -> None:
    """Schema, org and metrics CSV. Runs in a child process: its memory is not the engine's."""
    os.environ["PERFCYCLE_DATABASE_URL"] = url
    from perfcycle.core import migrate
    from perfcycle.core.db import session_scope
    from perfcycle.devtools.demo_data import sample_org, write_org_csv
    from perfcycle.domain.org import import_org_csv
    from perfcycle.domain.policy.loader import load_policy
    from perfcycle.domain.stages.data_collection import needed_metrics

    migrate.upgrade(url)
    rows = sample_org(employees)
    org_csv = write_org_csv(rows, Path(folder) / "org.csv")
    with session_scope(url) as session:
        import_org_csv(session, org_csv, actor="bench")
    metrics = needed_metrics(load_policy(Path(policy_path)))
    metrics_csv = Path(folder) / "metrics.csv"
    write_metrics_csv(metrics_csv, [r["employee_id"] for r in rows], metrics)


def run_in_child(target: Any, *args: Any) -> None:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join()
    if process.exitcode != 0:
        raise BenchError(f"set-up failed in a child process (exit code {process.exitcode})")


# ---------------------------------------------------------------- measuring


def peak_rss_mb() -> float:
    """This process's high-water mark of resident memory (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row_counts(url: str) -> dict[str, int]:
    """Rows of every table the database holds (what the migrations built, not the models)."""
    from perfcycle.core.db import get_engine

    engine = get_engine(url)
    names = [n for n in inspect(engine).get_table_names() if n != "alembic_version"]
    with engine.connect() as conn:
        return {
            name: int(conn.scalar(select(func.count()).select_from(table(name))) or 0)
            for name in sorted(names)
        }


def evaluation_counts(url: str) -> dict[str, int]:
    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import OutboxMessage, Participant, RaterAssignment

    def count(model: Any, *where: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    with session_scope(url) as session:
        return {
            "participants": count(Participant),
            "rater_assignments": count(RaterAssignment),
            "evaluation_mails": count(
                OutboxMessage, OutboxMessage.template == "evaluation_assigned"
            ),
            "raters": int(
                session.scalar(select(func.count(func.distinct(RaterAssignment.rater_id)))) or 0
            ),
        }


def timeline(url: str, since: datetime) -> list[dict[str, Any]]:
    """The audit trail of the run, as seconds after launch: where the domain time went."""
    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import AuditEvent

    with session_scope(url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.at >= since).order_by(AuditEvent.id)
        ).all()
        return [
            {
                "at_s": round((e.at - since).total_seconds(), 2),
                "action": e.action,
                "subject": e.subject,
            }
            for e in events
        ]


def task_runs(flow_run_id: UUID) -> list[str]:
    """Names of the flow run's task runs, once the server has recorded all of them.

    Task-run states reach the server as events, a moment after the engine moved on.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + TASK_RUNS_WAIT_S
    seen: list[str] = []
    stable_since = time.monotonic()
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            names = sorted(r.name for r in runs)
            if names != seen:
                seen, stable_since = names, time.monotonic()
            elif time.monotonic() - stable_since >= TASK_RUNS_SETTLE_S:
                break
            time.sleep(0.25)
    return seen


# ---------------------------------------------------------------- the timed launch


@dataclass
class Launch:
    flow_run_id: str
    state: str
    seconds: float
    started_at: datetime


def launch_and_run_to_suspend(policy: str, period: str) -> Launch:
    """Create a flow run of review-cycle/launch and execute it here until it suspends."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow

    from perfcycle.orchestration.review_cycle.flow import review_cycle

    # Called outside an event loop, both return plain values (Prefect's sync/async dispatch).
    deployment = cast(RunnerDeployment, review_cycle.to_deployment(name="launch"))
    deployment_id = cast(UUID, deployment.apply())
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"policy": policy, "period": period}
        )
    # Pause is how suspend_flow_run leaves: the evaluation stage now waits for its raters.
    with suppress(Pause):
        run_flow(review_cycle, flow_run=flow_run, parameters=flow_run.parameters)
    seconds = time.perf_counter() - started
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    return Launch(str(flow_run.id), (state and state.name) or "unknown", seconds, started_at)


# ---------------------------------------------------------------- report


@dataclass
class Report:
    employees: int
    database: str
    raters_per_ratee: dict[str, int]
    seconds_to_suspended: float
    flow_run_state: str
    participants: int
    rater_assignments: int
    raters: int
    evaluation_mails: int
    rows_written: int
    rows_written_by_table: dict[str, int]
    task_runs: int
    task_run_names: list[str]
    peak_rss_mb_baseline: float
    peak_rss_mb: float
    cpus: int
    python: str
    timeline: list[dict[str, Any]] = field(default_factory=list)


def print_table(report: Report) -> None:
    lines = [
        ("employees", f"{report.employees:,}"),
        ("database", report.database),
        ("raters per ratee", ", ".join(f"{t} {n}" for t, n in report.raters_per_ratee.items())),
        ("launch -> Suspended", f"{report.seconds_to_suspended:.1f} s"),
        ("flow run state", report.flow_run_state),
        ("participants", f"{report.participants:,}"),
        ("rater assignments", f"{report.rater_assignments:,} ({report.raters:,} raters)"),
        ("evaluation_assigned mails", f"{report.evaluation_mails:,}"),
        ("rows written", f"{report.rows_written:,}"),
        ("Prefect task runs", str(report.task_runs)),
        ("peak RSS before launch", f"{report.peak_rss_mb_baseline:.0f} MiB"),
        ("peak RSS after", f"{report.peak_rss_mb:.0f} MiB"),
        ("machine", f"{report.cpus} CPUs, Python {report.python}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    print(
        "rows by table: " + ", ".join(f"{t} {n:,}" for t, n in report.rows_written_by_table.items())
    )
    print("timeline (s after launch):")
    for event in report.timeline:
        print(f"  {event['at_s']:>7.2f}  {event['action']:<22} {event['subject']}")


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--employees", type=int, required=True, help="headcount, at least 8")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help=f"bench database, dropped and re-created; its name must contain 'bench' "
        f"(default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--raters",
        nargs="*",
        default=[],
        metavar="TYPE=COUNT",
        help="override raters per ratee, e.g. service_recipient=3 peer=2 (default: the "
        "external-service policy's 6)",
    )
    parser.add_argument("--period", default=PERIOD)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the database and temp folder")
    return parser.parse_args(argv)


@contextmanager
def bench_environment(folder: Path, url: str) -> Iterator[None]:
    """Our settings for this process and the stack's children; restored afterwards."""
    from perfcycle.core.settings import get_settings

    wanted = {
        "PERFCYCLE_HOME": str(folder),
        "PERFCYCLE_DATABASE_URL": url,
        "PERFCYCLE_POLICIES_DIR": str(folder / "policies"),
    }
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def run_bench(args: argparse.Namespace, folder: Path) -> Report:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from perfcycle.devtools.devstack import Stack
    from perfcycle.domain.policy.loader import load_policy

    url = args.database_url
    raters = parse_raters(args.raters)
    fresh_database(url)
    policy_path = write_policy(folder / "policies", folder / "metrics.csv", raters)
    run_in_child(set_up_organisation, url, args.employees, str(folder), str(policy_path))
    policy = load_policy(policy_path)
    with Stack(home=folder / "stack", free_ports=True, with_flows=False, database_url=url) as stack:
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("PREFECT_")})
        with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}):
            before = row_counts(url)
            baseline = peak_rss_mb()
            launch = launch_and_run_to_suspend(POLICY_NAME, args.period)
            peak = peak_rss_mb()
            names = task_runs(UUID(launch.flow_run_id))
    after = row_counts(url)
    written = {t: after[t] - before[t] for t in after if after[t] != before[t]}
    counts = evaluation_counts(url)
    return Report(
        employees=args.employees,
        database=make_url(url).render_as_string(hide_password=True),
        raters_per_ratee={t.value: r.count for t, r in policy.raters.items()},
        seconds_to_suspended=round(launch.seconds, 2),
        flow_run_state=launch.state,
        participants=counts["participants"],
        rater_assignments=counts["rater_assignments"],
        raters=counts["raters"],
        evaluation_mails=counts["evaluation_mails"],
        rows_written=sum(written.values()),
        rows_written_by_table=written,
        task_runs=len(names),
        task_run_names=names,
        peak_rss_mb_baseline=round(baseline, 1),
        peak_rss_mb=round(peak, 1),
        cpus=os.cpu_count() or 0,
        python=sys.version.split()[0],
        timeline=timeline(url, launch.started_at),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.employees < 8:
        print("error: --employees must be at least 8", file=sys.stderr)
        return 2
    try:
        check_bench_url(args.database_url)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="perfcycle-bench-"))
    try:
        with bench_environment(folder, args.database_url):
            report = run_bench(args, folder)
    except (BenchError, InvalidInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            drop_database(args.database_url)
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(report), indent=2, ensure_ascii=False))
    else:
        print_table(report)
    if args.keep:
        print(f"kept: database {report.database}, folder {folder}", file=sys.stderr)
    return 0 if report.flow_run_state == "Suspended" else 1


if __name__ == "__main__":
    sys.exit(main())
