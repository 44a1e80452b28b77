"""`perfcycle` command line: operations for HR, the committee, auditors and developers.

JSON shapes printed with --json are a contract: scripts and integrations rely on them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from perfcycle.core.errors import InvalidInput


def _session() -> Any:
    from perfcycle.core.db import session_scope
    from perfcycle.core.migrate import upgrade

    upgrade()
    return session_scope()


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2, default=str))


# ---------------------------------------------------------------- commands


def cmd_policy_check(args: argparse.Namespace) -> int:
    from perfcycle.cli.policy import check_command

    return check_command(args.files)


def cmd_policy_schema(args: argparse.Namespace) -> int:
    from perfcycle.cli.policy import schema_command

    return schema_command(args.out)


def cmd_org_import(args: argparse.Namespace) -> int:
    from perfcycle.domain.org import import_org_csv

    with _session() as session:
        report = import_org_csv(session, args.file, actor=args.actor)
    print(f"Imported {args.file}: {report}")
    return 0


def cmd_evaluations_import(args: argparse.Namespace) -> int:
    from perfcycle.domain import engine
    from perfcycle.domain.access import Actor
    from perfcycle.domain.policy.snapshot import cycle_policy
    from perfcycle.domain.stages.evaluation import import_evaluations_csv

    with _session() as session:
        cycle = engine.get_cycle(session, args.cycle)
        n = import_evaluations_csv(
            session, cycle.id, args.file, cycle_policy(cycle), Actor.hr(args.actor)
        )
    print(f"Imported {n} evaluations into cycle {args.cycle}")
    return 0


def cmd_metrics_import(args: argparse.Namespace) -> int:
    from perfcycle.domain import engine
    from perfcycle.domain.access import Actor
    from perfcycle.domain.policy.snapshot import cycle_policy
    from perfcycle.domain.stages.data_collection import import_metrics_csv

    with _session() as session:
        cycle = engine.get_cycle(session, args.cycle)
        policy = cycle_policy(cycle)
        n = import_metrics_csv(session, cycle, policy, args.file, Actor.hr(args.actor))
    print(f"Imported {n} metric values into cycle {args.cycle}")
    return 0


def cmd_cycle_launch(args: argparse.Namespace) -> int:
    from perfcycle.domain import cycles
    from perfcycle.orchestration.client import launch

    request = cycles.LaunchRequest(args.policy, args.period, args.scope or [], args.start_date)
    with _session() as session:
        cycles.validate_launch(session, request)  # a clear error here beats a failed run
    run_id = launch(args.policy, args.period, args.scope or [], args.start_date)
    print(f"Launched flow run {run_id} of review-cycle/launch")
    return 0


def cmd_cycle_list(args: argparse.Namespace) -> int:
    from perfcycle.domain.status import cycle_list

    with _session() as session:
        rows = cycle_list(session)
    if args.json:
        _print_json(rows)
    else:
        print(f"{'id':>4}  {'policy':<22} {'period':<9} {'state':<10} stage")
        for r in rows:
            print(
                f"{r['id']:>4}  {r['policy']:<22} {r['period']:<9} {r['state']:<10} "
                f"{r['current_stage'] or ''}"
            )
    return 0


def cmd_cycle_status(args: argparse.Namespace) -> int:
    from perfcycle.domain.status import cycle_status

    with _session() as session:
        status = cycle_status(session, args.id)
    if args.json:
        _print_json(status)
    else:
        print(f"Cycle {status['id']}: {status['policy']} {status['period']} — {status['state']}")
        for s in status["stages"]:
            due = (s["due_at"] or "")[:16]
            print(f"  {s['name']:<16} {s['state']:<10} {s['done']:>5}/{s['total']:<5} due {due}")
    return 0


def cmd_cycle_decide(args: argparse.Namespace) -> int:
    """The committee's decision from a terminal (same run input as the Prefect UI form)."""
    from perfcycle.domain import engine
    from perfcycle.domain.stages.calibration import DecisionInput
    from perfcycle.orchestration.client import resume

    decision = DecisionInput(
        decision=args.decision,
        approver=args.approver,
        comment=args.comment,
        send_back_employees=args.send_back or [],
    )
    with _session() as session:
        cycle = engine.get_cycle(session, args.id)
        run_id = cycle.flow_run_id
    if not run_id or not resume(run_id, run_input=decision.model_dump()):
        raise InvalidInput(f"cycle {args.id} is not waiting for a calibration decision")
    print(f"Recorded {args.decision} for cycle {args.id}; flow run {run_id} resumed")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from perfcycle.domain.reports import results_text
    from perfcycle.domain.results import results_table

    with _session() as session:
        from perfcycle.domain import engine

        engine.get_cycle(session, args.id)
        rows = results_table(session, args.id)
    if args.json:
        _print_json(rows)
    elif args.csv:
        print_results_csv(rows, sys.stdout)
    else:
        print(results_text(rows))
    return 0


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): text
# cells starting so get a leading apostrophe, which spreadsheets show as plain text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """`value` safe to open in a spreadsheet: numbers as they are, text never a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def print_results_csv(rows: Sequence[dict[str, Any]], out: Any) -> None:
    indicators = sorted({k for r in rows for k in r["indicators"]})
    categories = sorted({k for r in rows for k in r["categories"]})
    writer = csv.writer(out)
    header = [
        "employee_id",
        *[f"indicator:{i}" for i in indicators],
        *[f"category:{c}" for c in categories],
        "total",
        "grade",
    ]
    writer.writerow([spreadsheet_cell(cell) for cell in header])
    for r in rows:
        cells = [
            r["employee_id"],
            *["" if r["indicators"].get(i) is None else r["indicators"][i] for i in indicators],
            *[r["categories"].get(c, "") for c in categories],
            r["total"],
            r["grade"],
        ]
        writer.writerow([spreadsheet_cell(cell) for cell in cells])


def cmd_audit_verify(_args: argparse.Namespace) -> int:
    from perfcycle.domain import audit

    with _session() as session:
        report = audit.verify(session)
    if report.ok:
        print(f"audit chain OK: {report.checked} events verified")
        return 0
    print(
        f"audit chain BROKEN at audit_events.id={report.broken_id}: {report.problem} "
        f"({report.checked} events before it verified)",
        file=sys.stderr,
    )
    return 1


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from perfcycle.core.migrate import upgrade

    upgrade()
    print("database is up to date")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from perfcycle.devtools.devstack import up_command

    return up_command(args)


def cmd_serve(_args: argparse.Namespace) -> int:
    from perfcycle.orchestration.serve import main as serve_main

    serve_main()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from perfcycle.devtools.demo import demo_command

    return demo_command(args)


def cmd_mail_sink(args: argparse.Namespace) -> int:
    from perfcycle.notifications.mailsink import main as sink_main

    return sink_main(args.rest)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perfcycle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str, parent: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "start Prefect server, deployments, portal and mail sink locally")
    from perfcycle.devtools.devstack import add_up_arguments

    add_up_arguments(p)
    p = add("demo", cmd_demo, "run a complete demo review cycle on a sample organisation")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the stack up after the demo (Ctrl-C to stop)",
    )
    p.add_argument("--period", default="2026-Q4")
    add("serve", cmd_serve, "serve the Prefect deployments (used by `up`)")
    p = add("mail-sink", cmd_mail_sink, "run a local SMTP sink that stores .eml files")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_cmd", required=True)
    add("upgrade", cmd_db_upgrade, "apply database migrations", db)

    pol = sub.add_parser("policy", help="policy files").add_subparsers(dest="p", required=True)
    p = add("check", cmd_policy_check, "validate policy files", pol)
    p.add_argument("files", nargs="+", type=Path)
    p = add("schema", cmd_policy_schema, "write policies/schema.json from the schema", pol)
    p.add_argument("--out", type=Path, default=None)

    org = sub.add_parser("org", help="organisation").add_subparsers(dest="o", required=True)
    p = add("import", cmd_org_import, "import the org chart CSV (all-or-nothing)", org)
    p.add_argument("file", type=Path)
    p.add_argument("--actor", default="hr")

    ev = sub.add_parser("evaluations", help="evaluations").add_subparsers(dest="e", required=True)
    p = add("import", cmd_evaluations_import, "import paper evaluation forms (CSV)", ev)
    p.add_argument("file", type=Path)
    p.add_argument("--cycle", type=int, required=True)
    p.add_argument("--actor", default="hr")

    me = sub.add_parser("metrics", help="metric values").add_subparsers(dest="m", required=True)
    p = add("import", cmd_metrics_import, "supply metric values by CSV", me)
    p.add_argument("file", type=Path)
    p.add_argument("--cycle", type=int, required=True)
    p.add_argument("--actor", default="hr")

    cy = sub.add_parser("cycle", help="review cycles").add_subparsers(dest="c", required=True)
    p = add("launch", cmd_cycle_launch, "launch a cycle (a run of review-cycle/launch)", cy)
    p.add_argument("--policy", required=True)
    p.add_argument("--period", required=True)
    p.add_argument("--scope", nargs="*", default=[], help="department ids")
    p.add_argument("--start-date", type=date.fromisoformat, default=None)
    p = add("list", cmd_cycle_list, "list cycles, newest first", cy)
    p.add_argument("--json", action="store_true")
    p = add("status", cmd_cycle_status, "a cycle's stages and progress", cy)
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p = add("decide", cmd_cycle_decide, "record the calibration committee's decision", cy)
    p.add_argument("id", type=int)
    p.add_argument("--decision", choices=["approve", "send_back"], required=True)
    p.add_argument("--approver", required=True)
    p.add_argument("--comment", default="")
    p.add_argument("--send-back", nargs="*", default=[])

    p = add("results", cmd_results, "a cycle's scores and grades")
    p.add_argument("id", type=int)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    from perfcycle.web.serve import register as register_portal

    register_portal(sub)

    from perfcycle.cli.roles import register as register_roles

    register_roles(sub)

    from perfcycle.cli.outbox import register as register_outbox

    register_outbox(sub)

    au = sub.add_parser("audit", help="audit log").add_subparsers(dest="a", required=True)
    add("verify", cmd_audit_verify, "recompute the audit hash chain", au)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:
        # e.g. the app role may not create tables: say so, without a driver traceback.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        print(f"error: database: {reason}", file=sys.stderr)
        if "permission denied" in reason:
            print("hint: run `perfcycle db upgrade` as the role that owns the tables "
                  "(deploy/README.md)", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    raise SystemExit(main())
