"""Mail relay benchmark: messages per second from the outbox to a local SMTP server.

    .venv/bin/python bench/mail_relay.py --messages 10000 [--database-url URL] [--relays 1]
        [--batch-size 200] [--connections 4] [--sink count|files] [--json] [--keep]

Set-up, not timed: a fresh database (a SQLite file in a temporary folder unless --database-url
names one, which must have 'bench' in its name: it is dropped and re-created), the schema, and
N outbox rows as the stages write them (evaluation_assigned with five ratees, goals_to_agree,
stage_opened; nine in ten in zh-CN). An SMTP server in a child process: `count` (default) keeps
only the Message-IDs, so the figure measures the relay, not the disk; `files` is the dev stack's
MailSink writing .eml files.

Timed: relay_until_idle (claim, render, send over a few SMTP sessions, record) until the outbox
holds nothing due, in --relays processes at once (each row is claimed by one). Reported: messages
delivered per second, the relay's CPU time per message and the load average (on a shared machine
the wall-clock rate understates the relay), and the checks that make the number mean something:
every row sent, every Message-ID received exactly once, no delivered row keeping its link.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from sqlalchemy.engine import make_url  # noqa: E402

from perfcycle.core.settings import Settings  # noqa: E402

FILL_CHUNK = 5000
DELIVERY_WAIT_S = 30.0


class BenchError(RuntimeError):
    """The benchmark cannot run as asked, or its result cannot be trusted; the message says why."""


class BenchSettings(Settings):
    smtp_max_connections: int = 4
    mail_rate_per_second: float = 0.0
    mail_render_processes: int | None = None


@dataclass
class Report:
    messages: int
    delivered: int
    unique_message_ids: int
    seconds: float
    messages_per_second: float
    # The relay's own CPU per message: on a busy machine the wall-clock rate understates it.
    relay_cpu_ms_per_message: float
    sink_cpu_ms_per_message: float
    relays: int
    batch_size: int
    connections_per_relay: int
    render_processes: int
    sink: str
    database: str
    fill_seconds: float
    load_before: float
    load_after: float
    cpus: int
    python: str


# ---------------------------------------------------------------- set-up (not timed)


def check_bench_url(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise BenchError(f"{parsed.get_backend_name()}: only PostgreSQL and SQLite are supported")
    if "bench" not in Path(parsed.database or "").name:
        raise BenchError(
            f"refusing to use database {parsed.database!r}: the bench drops and re-creates its "
            "database, so its name must contain 'bench' (e.g. .../perfcycle_bench_mail)"
        )


def fresh_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        drop_database(url)
        return
    import psycopg

    with psycopg.connect(_admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{parsed.database}"')


def drop_database(url: str) -> None:
    from perfcycle.core.db import get_engine

    get_engine.cache_clear()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path((parsed.database or "") + suffix).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(_admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')


def _admin_dsn(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database="postgres")
    return parsed.render_as_string(hide_password=False)


def sample_mails(count: int) -> list[Any]:
    """Mails shaped as the stages write them (see perfcycle/domain/stages/*.py)."""
    from perfcycle.notifications.outbox import Mail

    due = "2027-01-20T10:00:00+00:00"
    mails = []
    for n in range(count):
        locale = "en" if n % 10 == 0 else "zh-CN"
        kind = n % 3
        if kind == 0:
            ratees = [
                {"employee_id": f"E{n + k:05d}", "name": f"同事 {n + k}", "rater_type": "peer"}
                for k in range(1, 6)
            ]
            template = "evaluation_assigned"
            context: dict[str, Any] = {
                "cycle_id": 1,
                "stage": "evaluation",
                "due_at": due,
                "ratees": ratees,
                "count": len(ratees),
                # Task mails carry a link, which the relay blanks once the mail is delivered.
                "link": f"http://127.0.0.1:8700/t/bench-token-{n:05d}",
            }
        elif kind == 1:
            template = "goals_to_agree"
            context = {
                "cycle_id": 1,
                "period": "2026-Q4",
                "name": f"员工 {n}",
                "due_at": due,
                "indicators": 9,
                "link": f"http://127.0.0.1:8700/t/bench-token-{n:05d}",
            }
        else:
            template = "stage_opened"
            context = {
                "cycle_id": 1,
                "policy": "external-service",
                "period": "2026-Q4",
                "stage": "evaluation",
                "due_at": due,
            }
        mails.append(
            Mail(1, f"E{n:05d}", f"person{n}@example.com", locale, template, f"bench:{n}", context)
        )
    return mails


def fill_outbox(url: str, count: int) -> float:
    """Write the rows; fails at once if one of the sample mails does not render."""
    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import Cycle
    from perfcycle.notifications import outbox
    from perfcycle.notifications.render import render

    mails = sample_mails(count)
    for mail in mails[:3]:
        try:
            render(mail.template, mail.locale, mail.context)
        except Exception as exc:
            raise BenchError(f"sample mail {mail.template} does not render: {exc!r}") from exc
    started = time.perf_counter()
    with session_scope(url) as session:
        session.add(_bench_cycle(Cycle))
        session.flush()
        for start in range(0, len(mails), FILL_CHUNK):
            outbox.enqueue(session, mails[start : start + FILL_CHUNK])
    return time.perf_counter() - started


def _bench_cycle(cycle_model: Any) -> Any:
    from datetime import date

    from perfcycle.core import clock

    return cycle_model(
        id=1,
        policy="bench",
        policy_digest="-",
        policy_snapshot={},
        period="2026-Q4",
        period_start=date(2026, 10, 1),
        period_end=date(2026, 12, 31),
        scope_key="",
        start_date=date(2027, 1, 4),
        state="running",
        created_at=clock.now(),
    )


# ---------------------------------------------------------------- the SMTP server (a child)


class _Counter:
    def __init__(self) -> None:
        self.ids: list[str] = []

    # aiosmtpd's hook, called as (server, session, envelope): only the envelope is needed here.
    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        from email.parser import BytesParser
        from email.policy import compat32

        headers = BytesParser(policy=compat32).parsebytes(envelope.original_content, True)
        self.ids.append(str(headers["Message-ID"]))
        return "250 OK"


def _serve(kind: str, folder: str, conn: Connection) -> None:
    from perfcycle.devtools.devstack import pick_free_ports

    port = pick_free_ports(1)[0]
    if kind == "files":
        from perfcycle.notifications.mailsink import MailSink

        sink = MailSink(Path(folder) / "mail", port=port).start()
        conn.send(sink.port)
        conn.recv()  # until told to stop
        ids = [p.name for p in (Path(folder) / "mail").glob("*.eml")]
        sink.stop()
        conn.send(ids)
        return
    from aiosmtpd.controller import Controller

    counter = _Counter()
    controller = Controller(counter, hostname="127.0.0.1", port=port)
    controller.start()
    conn.send(port)
    while True:
        request = conn.recv()
        if request == "count":
            conn.send(len(counter.ids))
            continue
        break
    controller.stop()
    conn.send(counter.ids)


class SinkProcess:
    def __init__(self, kind: str, folder: Path):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.kind = kind
        self._process = context.Process(target=_serve, args=(kind, str(folder), child))
        self._process.start()
        self.port: int = self._conn.recv()

    def count(self) -> int | None:
        if self.kind != "count":
            return None
        self._conn.send("count")
        return int(self._conn.recv())

    def stop(self) -> list[str]:
        self._conn.send("stop")
        ids: list[str] = self._conn.recv()
        self._process.join(timeout=10)
        return ids


# ---------------------------------------------------------------- timed


def bench_settings(port: int, connections: int, render_processes: int | None) -> BenchSettings:
    return BenchSettings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_max_connections=connections,
        mail_render_processes=render_processes,
    )


def _relay(url: str, worker: str, batch: int, settings: BenchSettings) -> None:
    from perfcycle.notifications import relay

    relay.relay_until_idle(url, worker, limit=batch, settings=settings)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the relay processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_relays(url: str, relays: int, batch: int, settings: BenchSettings) -> tuple[float, float]:
    """(wall seconds, CPU seconds) the relays took."""
    cpu = cpu_seconds()
    started = time.perf_counter()
    if relays == 1:
        _relay(url, "bench-relay-1", batch, settings)
    else:
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_relay, args=(url, f"bench-relay-{i + 1}", batch, settings))
            for i in range(relays)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
            if process.exitcode != 0:
                raise BenchError(f"a relay process exited with {process.exitcode}")
    return time.perf_counter() - started, cpu_seconds() - cpu


def outbox_states(url: str) -> dict[str, int]:
    from perfcycle.core.db import session_scope
    from perfcycle.notifications import outbox

    with session_scope(url) as session:
        return outbox.state_counts(session)


def rows_with_links(url: str) -> int:
    from sqlalchemy import select

    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import OutboxMessage
    from perfcycle.notifications.notify import links_in

    with session_scope(url) as session:
        return sum(1 for c in session.scalars(select(OutboxMessage.context)) if links_in(c))


def first_error(url: str) -> str | None:
    from sqlalchemy import select

    from perfcycle.core.db import session_scope
    from perfcycle.domain.models import OutboxMessage

    with session_scope(url) as session:
        return session.scalar(
            select(OutboxMessage.last_error)
            .where(OutboxMessage.last_error.is_not(None))
            .order_by(OutboxMessage.id)
            .limit(1)
        )


def run_bench(args: argparse.Namespace, folder: Path) -> Report:
    from perfcycle.core import migrate
    from perfcycle.notifications.relay import render_processes

    url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    fresh_database(url)
    migrate.upgrade(url)
    fill_seconds = fill_outbox(url, args.messages)
    sink = SinkProcess(args.sink, folder)
    load_before = os.getloadavg()[0]
    try:
        settings = bench_settings(sink.port, args.connections, args.render_processes)
        seconds, cpu = run_relays(url, args.relays, args.batch_size, settings)
    finally:
        sink_cpu = cpu_seconds()
        received = sink.stop()
        sink_cpu = cpu_seconds() - sink_cpu
    load_after = os.getloadavg()[0]
    states = outbox_states(url)
    if states["sent"] != args.messages:
        raise BenchError(f"not every row was sent: {states}; first error: {first_error(url)}")
    if still_linked := rows_with_links(url):
        raise BenchError(f"{still_linked} delivered rows still hold their task link")
    unique = len(set(received))
    if len(received) != args.messages or unique != args.messages:
        raise BenchError(
            f"{len(received)} messages received, {unique} distinct, expected "
            f"{args.messages} once each"
        )
    return Report(
        messages=args.messages,
        delivered=len(received),
        unique_message_ids=unique,
        seconds=round(seconds, 2),
        messages_per_second=round(len(received) / seconds, 1),
        relay_cpu_ms_per_message=round(1000 * cpu / args.messages, 2),
        sink_cpu_ms_per_message=round(1000 * sink_cpu / args.messages, 2),
        relays=args.relays,
        batch_size=args.batch_size,
        connections_per_relay=args.connections,
        render_processes=render_processes(settings),
        sink=args.sink,
        database=make_url(url).render_as_string(hide_password=True),
        fill_seconds=round(fill_seconds, 2),
        load_before=round(load_before, 2),
        load_after=round(load_after, 2),
        cpus=os.cpu_count() or 0,
        python=sys.version.split()[0],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--relays", type=int, default=1, help="relay processes at once")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--connections", type=int, default=4, help="SMTP sessions per relay")
    parser.add_argument(
        "--render-processes",
        type=int,
        default=None,
        help="render processes per relay (default: the relay's, one per CPU beyond the first)",
    )
    parser.add_argument("--sink", choices=["count", "files"], default="count")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the database and temp folder")
    return parser.parse_args(argv)


def print_report(report: Report) -> None:
    print(
        f"mail relay: {report.delivered} of {report.messages} messages delivered in "
        f"{report.seconds} s = {report.messages_per_second} messages/s"
    )
    print(
        f"  {report.relays} relay(s), batches of {report.batch_size}, "
        f"{report.connections_per_relay} SMTP sessions and {report.render_processes} render "
        f"process(es) each; sink: {report.sink}"
    )
    print(
        f"  database {report.database} (filled in {report.fill_seconds} s); "
        f"{report.cpus} CPUs, Python {report.python}"
    )
    print(
        f"  CPU per message: relay {report.relay_cpu_ms_per_message} ms, SMTP server "
        f"{report.sink_cpu_ms_per_message} ms; load average before {report.load_before}, "
        f"after {report.load_after}"
    )
    print(
        f"  checks: every row sent, {report.unique_message_ids} distinct Message-IDs, "
        "no delivered row keeps its link"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.messages < 1 or args.relays < 1 or args.batch_size < 1 or args.connections < 1:
        print(
            "error: --messages, --relays, --batch-size, --connections must be >= 1", file=sys.stderr
        )
        return 2
    try:
        if args.database_url:
            check_bench_url(args.database_url)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="perfcycle-bench-mail-"))
    try:
        report = run_bench(args, folder)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            if args.database_url:
                drop_database(args.database_url)
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
