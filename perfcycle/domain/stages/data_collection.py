"""Data collection: the policy's sources fill metric_values for every participant of the cycle.

Entering collects from the sources and upserts (insert new, update changed), so re-running
converges. What stays missing is what the stage waits for: HR can supply it by CSV
(`import_metrics_csv`). A value HR supplied is never overwritten by a later collection run.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from perfcycle.connectors.sources import MetricRow, collect, parse_metrics_csv
from perfcycle.core import clock
from perfcycle.core.db import upsert
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain import audit
from perfcycle.domain.access import Actor
from perfcycle.domain.deadlines import accepting_metrics
from perfcycle.domain.models import Cycle, MetricValue, Participant, StageName
from perfcycle.domain.policy.schema import MetricIndicator, Policy, VetoIndicator
from perfcycle.domain.stages.base import Progress, StageContext

# The `source` of values HR supplied by CSV; collection runs leave these alone.
HR_IMPORT = "hr_import"
MISSING_LISTED = 50
_TABLE: Table = MetricValue.__table__  # type: ignore[assignment]


class Handler:
    def enter(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy = ctx.session, ctx.cycle, ctx.policy
        result = collect(
            policy.sources, cycle.period_start, cycle.period_end, participant_ids(session, cycle)
        )
        written = store_metric_values(session, cycle.id, result.rows, keep_sources={HR_IMPORT})
        summary = {
            "metric_values": len(result.rows),
            "sources": result.counts,
            "inserted": written.inserted,
            "updated": written.updated,
        }
        if written.inserted or written.updated:
            audit.record(
                session,
                actor=audit.SYSTEM,
                action="metrics.collected",
                subject=f"cycle:{cycle.id}/stage:{StageName.data_collection}",
                cycle_id=cycle.id,
                after={**summary, "overridden": result.overridden},
            )
        return summary

    def progress(self, ctx: StageContext) -> Progress:
        session, cycle, policy = ctx.session, ctx.cycle, ctx.policy
        needed = needed_metrics(policy)
        participants = len(participant_ids(session, cycle))
        return Progress(
            done=_present_count(session, cycle, needed), total=participants * len(needed)
        )

    def close(self, ctx: StageContext) -> dict[str, Any]:
        session, cycle, policy = ctx.session, ctx.cycle, ctx.policy
        missing = missing_metrics(session, cycle, policy)
        return {
            "missing": [f"{e}:{m}" for e, m in missing[:MISSING_LISTED]],
            "missing_count": len(missing),
        }


def needed_metrics(policy: Policy) -> list[str]:
    """The metrics the policy's metric and veto indicators score, sorted."""
    metrics = {i.metric for i in policy.indicators if isinstance(i, MetricIndicator)}
    metrics |= {i.trigger.metric for i in policy.indicators if isinstance(i, VetoIndicator)}
    return sorted(metrics)


def participant_ids(session: Session, cycle: Cycle) -> set[str]:
    return set(
        session.scalars(select(Participant.employee_id).where(Participant.cycle_id == cycle.id))
    )


def missing_metrics(session: Session, cycle: Cycle, policy: Policy) -> list[tuple[str, str]]:
    """(employee, metric) pairs the policy needs and nobody has supplied, sorted."""
    needed = needed_metrics(policy)
    present = set(
        session.execute(
            select(MetricValue.employee_id, MetricValue.metric).where(
                MetricValue.cycle_id == cycle.id, MetricValue.metric.in_(needed)
            )
        ).tuples()
    )
    return [
        (employee, metric)
        for employee in sorted(participant_ids(session, cycle))
        for metric in needed
        if (employee, metric) not in present
    ]


def _present_count(session: Session, cycle: Cycle, needed: Sequence[str]) -> int:
    if not needed:
        return 0
    return (
        session.scalar(
            select(func.count())
            .select_from(MetricValue)
            .join(
                Participant,
                (Participant.cycle_id == MetricValue.cycle_id)
                & (Participant.employee_id == MetricValue.employee_id),
            )
            .where(MetricValue.cycle_id == cycle.id, MetricValue.metric.in_(needed))
        )
        or 0
    )


# ---------------------------------------------------------------- storing


@dataclass(frozen=True)
class Written:
    inserted: int
    updated: int
    # (employee, metric) -> value before the update, for the audit trail.
    replaced: dict[tuple[str, str], float]


def _normalised(evidence: dict[str, Any]) -> Any:
    # What the JSON column gives back, so unchanged evidence compares equal after a round trip.
    return json.loads(json.dumps(evidence, sort_keys=True, default=str))


def store_metric_values(
    session: Session,
    cycle_id: int,
    rows: Sequence[MetricRow],
    keep_sources: Collection[str] = (),
) -> Written:
    """Upsert on (cycle, employee, metric): insert new, update changed; values whose current
    source is in `keep_sources` stay as they are."""
    existing = {
        (e, m): (value, source, evidence)
        for e, m, value, source, evidence in session.execute(
            select(
                MetricValue.employee_id,
                MetricValue.metric,
                MetricValue.value,
                MetricValue.source,
                MetricValue.evidence,
            ).where(MetricValue.cycle_id == cycle_id)
        ).tuples()
    }
    now = clock.now()
    writes: list[dict[str, Any]] = []
    inserted = 0
    replaced: dict[tuple[str, str], float] = {}
    for row in rows:
        evidence = _normalised(row.evidence)
        current = existing.get((row.employee_id, row.metric))
        if current is None:
            inserted += 1
        else:
            value, source, old_evidence = current
            if source in keep_sources and source != row.source:
                continue
            if (value, source, old_evidence) == (row.value, row.source, evidence):
                continue
            replaced[(row.employee_id, row.metric)] = value
        writes.append(
            {
                "cycle_id": cycle_id,
                "employee_id": row.employee_id,
                "metric": row.metric,
                "value": row.value,
                "source": row.source,
                "evidence": evidence,
                "collected_at": now,
            }
        )
    upsert(
        session,
        _TABLE,
        writes,
        key=("cycle_id", "employee_id", "metric"),
        update=("value", "source", "evidence", "collected_at"),
    )
    return Written(inserted, len(writes) - inserted, replaced)


# ---------------------------------------------------------------- HR supplies values


def import_metrics_csv(
    session: Session, cycle: Cycle, policy: Policy, path: str | Path, actor: Actor
) -> int:
    """HR supplies (or corrects) metric values by CSV: employee_id,metric,value[,evidence].

    All or nothing: every row must name a participant of the cycle and a metric the policy uses.
    Imported values win over later collection runs. Returns the values inserted or changed.
    """
    name = str(path)
    accepting_metrics(session, cycle, name)
    records, problems = parse_metrics_csv(path)
    participants = participant_ids(session, cycle)
    allowed = set(needed_metrics(policy)) | _cross_check_metrics(policy)
    for r in records:
        if r.employee_id not in participants:
            problems.append(
                Problem(
                    f"{r.employee_id} is not a participant of cycle {cycle.id}",
                    file=name,
                    line=r.line,
                    field="employee_id",
                )
            )
        if r.metric not in allowed:
            problems.append(
                Problem(
                    f"policy {policy.id!r} uses no metric {r.metric!r} "
                    f"(it uses {', '.join(sorted(allowed))})",
                    file=name,
                    line=r.line,
                    field="metric",
                )
            )
    if problems:
        raise InvalidInput(sorted(problems, key=lambda p: p.line or 0))
    rows = [
        MetricRow(
            r.employee_id,
            r.metric,
            r.value,
            HR_IMPORT,
            {
                **r.evidence,
                "source": HR_IMPORT,
                "file": Path(path).name,
                "line": r.line,
                "supplied_by": actor.name,
                "period_start": cycle.period_start.isoformat(),
                "period_end": cycle.period_end.isoformat(),
            },
        )
        for r in records
    ]
    written = store_metric_values(session, cycle.id, rows)
    if written.inserted or written.updated:
        values = {f"{r.employee_id}:{r.metric}": r.value for r in rows}
        audit.record(
            session,
            actor=actor.name,
            action="metrics.imported",
            subject=f"cycle:{cycle.id}/stage:{StageName.data_collection}",
            cycle_id=cycle.id,
            before={f"{e}:{m}": v for (e, m), v in sorted(written.replaced.items())},
            after={
                "file": Path(path).name,
                "inserted": written.inserted,
                "updated": written.updated,
                "values": values,
            },
        )
    return written.inserted + written.updated


def _cross_check_metrics(policy: Policy) -> set[str]:
    checks = policy.calibration.cross_checks
    return {c.if_metric for c in checks} | {c.and_metric for c in checks}
