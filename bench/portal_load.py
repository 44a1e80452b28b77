"""Portal load benchmark: concurrent raters opening their mailed link and submitting a form.

    .venv/bin/python bench/portal_load.py [--raters 200] [--workers 2] [--employees 300]
        [--ramp 5] [--think 1-4 | --burst] [--database-url URL] [--time-limit 120]
        [--json] [--keep]

Set-up, not timed: a fresh database (PostgreSQL `perfcycle_portal_bench` at 127.0.0.1:5432
unless --database-url names another; it is dropped and re-created), the schema, a sample
organisation, and a cycle driven through the engine (no Prefect) until the evaluation stage
waits for its raters, with the bench policy of bench/cycle_launch.py. The links are the ones
the evaluation stage put into the raters' mails (outbox rows). Then the portal:
`perfcycle portal --workers N` (uvicorn) on a free loopback port.

Timed: the raters arrive over --ramp seconds (default 5) and all are mid-visit at once; each,
with its own httpx.AsyncClient (its own cookies and connection), does what a browser does: GET
the link (-> 303 and the session cookie), GET the list it lands on, reads for --think seconds
(default 1-4; a real rater takes minutes), GET one evaluation form, reads again, POST the form
with its CSRF token (-> 303). A few warm-up raters go first and are not counted. Reported:
submissions per second over the timed phase, p50/p95/p99 latency of the GETs and of the POSTs
measured by the client, the raters that failed (status, timeout) and the server's CPU time per
request. Every POST answered 303 must be exactly one submitted form in the database, or the
bench fails.

The client runs on the same machine as the server (and competes with it for the CPUs): its
latencies include its own scheduling delays, so they are an upper bound on the server's.
Everything is removed at the end (database, temporary folder) unless --keep. Exit code: 0 when
every rater got through and both p95s are under 100 ms, 2 when not, 1 when the bench could not run.

--burst drops the ramp and the reading time (every rater fires its requests back to back): the
portal's capacity, and how it behaves when more requests arrive than it can serve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: bench/ and perfcycle import
    sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from bench.cycle_launch import (  # noqa: E402
    POLICY_NAME,
    BenchError,
    check_bench_url,
    drop_database,
    fresh_database,
    run_in_child,
    set_up_organisation,
    write_policy,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/perfcycle_portal_bench"
PERIOD = "2026-Q4"
RUN_ID = "bench-portal-load"
APP = "perfcycle.web.app:app"
WARMUP_RATERS = 4
SERVER_START_S = 30.0
REQUEST_TIMEOUT_S = 30.0
TARGET_P95_MS = 100.0
COMMENT = "bench: concrete example from the period"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_SCORE = re.compile(r'name="score\.([^"]+)" value="(\d)"')


# ---------------------------------------------------------------- set-up (not timed)


@dataclass(frozen=True)
class Rater:
    person_id: str
    token: str


def prepare_cycle(url: str, folder: Path, employees: int) -> tuple[int, list[Rater]]:
    """Organisation, cycle waiting at evaluation; each rater's token from their mail."""
    policy_path = write_policy(folder / "policies", folder / "metrics.csv", {})
    run_in_child(set_up_organisation, url, employees, str(folder), str(policy_path))
    os.environ["PERFCYCLE_POLICIES_DIR"] = str(policy_path.parent)
    from perfcycle.core.settings import get_settings

    get_settings.cache_clear()
    cycle_id = launch_to_evaluation(url)
    return cycle_id, mailed_raters(url, cycle_id)


def launch_to_evaluation(url: str) -> int:
    """Open the cycle and step the engine, as the review-cycle flow does, until a stage waits."""
    from perfcycle.core.db import session_scope
    from perfcycle.domain import cycles, engine

    with session_scope(url) as session:
        valid = cycles.validate_launch(session, cycles.LaunchRequest(POLICY_NAME, PERIOD, []))
        cycle_id = cycles.open_cycle(session, valid, RUN_ID)[0].id
    for _ in range(10):
        step = engine.advance(cycle_id, url)
        if step.next == "finished":
            raise BenchError("the cycle finished without waiting at evaluation")
        if step.next != "continue":
            if step.stage != "evaluation":
                raise BenchError(f"the cycle waits at {step.stage}, not evaluation")
            return cycle_id
    raise BenchError("the cycle did not reach evaluation")


def mailed_raters(url: str, cycle_id: int) -> list[Rater]:
    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import OutboxMessage
    from perfcycle.notifications import links

    with session_scope(url) as session:
        rows = session.execute(
            select(OutboxMessage.recipient_id, OutboxMessage.context)
            .where(
                OutboxMessage.cycle_id == cycle_id,
                OutboxMessage.template == "evaluation_assigned",
            )
            .order_by(OutboxMessage.recipient_id)
        ).all()
    return [Rater(str(person), links.token_of(context["link"])) for person, context in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_portal(url: str, app: str, workers: int, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PERFCYCLE_NOW"}
    env["PERFCYCLE_DATABASE_URL"] = url
    command = [
        sys.executable,
        "-m",
        "perfcycle.cli.main",
        "portal",
        "--app",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"uvicorn exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_portal(process)
    raise BenchError(f"the portal did not answer /healthz within {SERVER_START_S:.0f} s")


def stop_portal(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ---------------------------------------------------------------- one rater


@dataclass(frozen=True)
class Pacing:
    """When raters arrive (spread over `ramp_s`) and how long they read before each next step."""

    ramp_s: float
    think_min_s: float
    think_max_s: float

    def think(self, rng: random.Random) -> float:
        return rng.uniform(self.think_min_s, self.think_max_s)


BURST = Pacing(0.0, 0.0, 0.0)


@dataclass
class Visit:
    """One rater's requests: seconds per request by what was asked, or what went wrong."""

    by_kind: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""

    def add(self, kind: str, seconds: float) -> None:
        self.by_kind.setdefault(kind, []).append(seconds)


class Unexpected(Exception):
    """The portal answered something a browser would not have carried on from."""


async def timed(
    visit: Visit, kind: str, expect: int, request: Any, *args: Any, **kwargs: Any
) -> httpx.Response:
    started = time.perf_counter()
    response: httpx.Response = await request(*args, **kwargs)
    visit.add(kind, time.perf_counter() - started)
    if response.status_code != expect:
        raise Unexpected(
            f"{kind} {response.request.url.path}: status {response.status_code}, expected "
            f"{expect}: {' '.join(response.text[:200].split())}"
        )
    return response


def answers_for(form_html: str, rng: random.Random) -> dict[str, str]:
    """A score for every item on the form, with a comment (some scores require one)."""
    items = sorted({item for item, _ in _SCORE.findall(form_html)})
    if not items:
        raise Unexpected("the evaluation form shows no items")
    data: dict[str, str] = {"action": "submit"}
    for item in items:
        data[f"score.{item}"] = str(rng.choice((2, 3, 4, 5)))
        data[f"comment.{item}"] = COMMENT
    return data


async def rate(
    base_url: str, rater: Rater, arrive_at: float, pacing: Pacing, seed: int, tls: ssl.SSLContext
) -> Visit:
    """One rater's visit, as a browser makes it: link, list, form, submission."""
    visit = Visit()
    rng = random.Random(seed)
    await asyncio.sleep(arrive_at)
    limits = httpx.Limits(max_connections=1)
    try:
        # One TLS context for all: building one per client (loading the CA bundle) costs ~20 ms
        # of the event loop's time, which would show up as the other raters' latency.
        async with httpx.AsyncClient(
            base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S, verify=tls
        ) as client:
            opened = await timed(visit, "GET link", 303, client.get, f"/t/{rater.token}")
            listing = await timed(visit, "GET list", 200, client.get, opened.headers["location"])
            form_path = re.search(r'href="(/evaluations/\d+)"', listing.text)
            if form_path is None:
                raise Unexpected("no evaluation form listed")
            await asyncio.sleep(pacing.think(rng))
            form = await timed(visit, "GET form", 200, client.get, form_path.group(1))
            token = _CSRF.search(form.text)
            if token is None:
                raise Unexpected("no csrf_token on the form")
            data = {"csrf_token": token.group(1), **answers_for(form.text, rng)}
            await asyncio.sleep(pacing.think(rng))
            await timed(visit, "POST form", 303, client.post, form_path.group(1), data=data)
    except (Unexpected, httpx.HTTPError) as exc:
        detail = str(exc) or f"no answer within {REQUEST_TIMEOUT_S:g} s"
        visit.error = f"rater {rater.person_id}: {type(exc).__name__}: {detail}"
    return visit


async def rate_all(
    base_url: str, raters: Sequence[Rater], pacing: Pacing, time_limit: float
) -> list[Visit]:
    step = pacing.ramp_s / len(raters)
    tls = ssl.create_default_context()
    visits = [rate(base_url, r, i * step, pacing, i, tls) for i, r in enumerate(raters)]
    return await asyncio.wait_for(asyncio.gather(*visits), time_limit)


def cpu_seconds(process_group: int) -> float:
    """CPU time (user + system) used so far by the processes of a process group (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        # After the command name: state, ppid, pgrp, ..., utime is field 14, stime 15 (1-based).
        if int(fields[2]) == process_group:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- report


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    ordered = sorted(values)
    rank = math.ceil(pct / 100 * len(ordered))
    return 1000 * ordered[min(max(rank, 1), len(ordered)) - 1]


def latency(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(1000 * max(values), 1),
    }


@dataclass
class Report:
    raters: int
    workers: int
    employees: int
    database: str
    pacing: dict[str, float]
    seconds: float
    submissions: int
    submissions_per_s: float
    gets: dict[str, float]
    posts: dict[str, float]
    by_request: dict[str, dict[str, float]]
    server_cpu_ms_per_request: float
    client_cpu_s: float
    failures: int
    first_failures: list[str]
    target_p95_ms: float = TARGET_P95_MS
    target_met: bool = False


def build_report(
    args: argparse.Namespace,
    pacing: Pacing,
    visits: Sequence[Visit],
    seconds: float,
    cpu: tuple[float, float],
) -> Report:
    by_kind: dict[str, list[float]] = {}
    for visit in visits:
        for kind, values in visit.by_kind.items():
            by_kind.setdefault(kind, []).extend(values)
    gets = [v for kind, values in by_kind.items() if kind.startswith("GET") for v in values]
    posts = by_kind.get("POST form", [])
    failed = [v.error for v in visits if v.error]
    requests = sum(len(v) for v in by_kind.values())
    report = Report(
        raters=args.raters,
        workers=args.workers,
        employees=args.employees,
        database=args.database_url.rsplit("@", 1)[-1],
        pacing=asdict(pacing),
        seconds=round(seconds, 2),
        submissions=len(posts) - sum("POST form" in e for e in failed),
        submissions_per_s=0.0,
        gets=latency(gets),
        posts=latency(posts),
        by_request={kind: latency(v) for kind, v in sorted(by_kind.items())},
        server_cpu_ms_per_request=round(1000 * cpu[0] / max(requests, 1), 1),
        client_cpu_s=round(cpu[1], 2),
        failures=len(failed),
        first_failures=failed[:5],
    )
    report.submissions_per_s = round(report.submissions / seconds, 1)
    report.target_met = not failed and (
        max(report.gets["p95_ms"], report.posts["p95_ms"]) < TARGET_P95_MS
    )
    return report


def print_report(report: Report) -> None:
    pacing = report.pacing
    print(
        f"{report.raters} raters arriving over {pacing['ramp_s']:g} s, reading "
        f"{pacing['think_min_s']:g}-{pacing['think_max_s']:g} s before each next step; "
        f"uvicorn --workers {report.workers}; {report.database}"
    )
    print(
        f"{report.submissions} submissions in {report.seconds:.2f} s = "
        f"{report.submissions_per_s} submissions/s; {report.failures} raters failed"
    )
    print(f"{'request':<10} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    rows = {"GETs": report.gets, "POSTs": report.posts, **report.by_request}
    for name, row in rows.items():
        if row["count"]:
            print(
                f"{name:<10} {row['count']:>5.0f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
                f"{row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}"
            )
    print(
        f"server CPU {report.server_cpu_ms_per_request} ms per request (all workers); "
        f"client CPU {report.client_cpu_s} s"
    )
    for failure in report.first_failures:
        print(f"failed: {failure}")
    verdict = "met" if report.target_met else "NOT met"
    print(f"target p95 < {report.target_p95_ms:.0f} ms, no failures: {verdict}")


# ---------------------------------------------------------------- checks and main


def check_submitted(url: str, cycle_id: int, done: Sequence[Rater]) -> None:
    """Every POST answered 303 must be exactly one submitted form in the database."""
    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import RaterAssignment

    with session_scope(url) as session:
        per_rater = dict(
            session.execute(
                select(RaterAssignment.rater_id, func.count())
                .where(RaterAssignment.cycle_id == cycle_id, RaterAssignment.state == "submitted")
                .group_by(RaterAssignment.rater_id)
            )
            .tuples()
            .all()
        )
    wrong = {r.person_id: per_rater.get(r.person_id, 0) for r in done}
    wrong = {person: n for person, n in wrong.items() if n != 1}
    if wrong:
        sample = dict(list(wrong.items())[:5])
        raise BenchError(f"raters whose 303 is not one submitted form (rater: forms): {sample}")


def parse_think(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        values = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN-MAX seconds, e.g. 2-6") from None
    if not 0 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= MIN <= MAX")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--raters", type=int, default=200, help="concurrent raters (timed)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--employees", type=int, default=300, help="organisation size")
    parser.add_argument(
        "--ramp", type=float, default=5.0, help="seconds over which the raters arrive"
    )
    parser.add_argument(
        "--think",
        type=parse_think,
        default=(1.0, 4.0),
        metavar="MIN-MAX",
        help="seconds a rater reads before opening the form and before submitting it",
    )
    parser.add_argument(
        "--burst", action="store_true", help="no ramp, no reading: every request at once"
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--app", default=APP, help="the ASGI app uvicorn serves (module:attr)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds, timed phase")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the database and folder")
    return parser


def run(args: argparse.Namespace) -> Report:
    if args.raters < 1 or args.workers < 1:
        raise BenchError("--raters and --workers must be at least 1")
    pacing = BURST if args.burst else Pacing(args.ramp, *args.think)
    check_bench_url(args.database_url)
    folder = Path(tempfile.mkdtemp(prefix="perfcycle-portal-bench-"))
    portal: subprocess.Popen[bytes] | None = None
    try:
        fresh_database(args.database_url)
        cycle_id, raters = prepare_cycle(args.database_url, folder, args.employees)
        needed = args.raters + WARMUP_RATERS
        if len(raters) < needed:
            raise BenchError(
                f"{len(raters)} raters in an organisation of {args.employees}; {needed} needed: "
                "raise --employees"
            )
        warmup, timed_raters = raters[:WARMUP_RATERS], raters[WARMUP_RATERS:needed]
        port = free_port()
        portal = start_portal(args.database_url, args.app, args.workers, port)
        base_url = f"http://127.0.0.1:{port}"
        # The workers compile their templates and open their connections before the clock starts.
        warm = asyncio.run(rate_all(base_url, warmup, BURST, args.time_limit))
        if any(v.error for v in warm):
            raise BenchError(f"warm-up failed: {next(v.error for v in warm if v.error)}")
        cpu_before = cpu_seconds(portal.pid), client_cpu_seconds()
        started = time.perf_counter()
        visits = asyncio.run(rate_all(base_url, timed_raters, pacing, args.time_limit))
        seconds = time.perf_counter() - started
        cpu = (
            cpu_seconds(portal.pid) - cpu_before[0],
            client_cpu_seconds() - cpu_before[1],
        )
        done = [r for r, v in zip(timed_raters, visits, strict=True) if not v.error]
        check_submitted(args.database_url, cycle_id, [*warmup, *done])
        return build_report(args, pacing, visits, seconds, cpu)
    except TimeoutError as exc:
        raise BenchError(
            f"the raters did not finish within --time-limit {args.time_limit} s"
        ) from exc
    finally:
        if portal is not None:
            stop_portal(portal)
        if not args.keep:
            drop_database(args.database_url)
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"portal_load: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0 if report.target_met else 2


if __name__ == "__main__":
    sys.exit(main())
