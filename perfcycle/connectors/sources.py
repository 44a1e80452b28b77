"""Data-collection connectors: turn a policy's sources into (employee, metric, value, evidence).

`sql` sources run their queries with the period bound as ISO date strings, end EXCLUSIVE:
:period_start is the first day, :period_end the day after the last. `csv` sources read
employee_id, metric, value[, evidence]. Every value keeps evidence of where it came from, so an
employee (or an auditor) can see which source, window and records a score rests on.

A query's evidence may name records in JSON arrays (the shipped policies list the ids of the
tickets that counted against the employee as `*_tickets`). Each array is kept bounded: its
first EVIDENCE_LIST_MAX ids in id order, and `<key>_more` says how many were left out, so a busy
agent's evidence stays small.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from perfcycle.connectors.csv import CsvRow, read_csv, required_problems
from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.policy.schema import CsvSource, SqlSource

Source = CsvSource | SqlSource

SQL_COLUMNS = ("employee_id", "metric", "value", "evidence")
CSV_REQUIRED = ("employee_id", "metric", "value")
CSV_OPTIONAL = ("evidence",)
_ENV_VAR = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# At most this many ids of one evidence list are kept; `<key>_more` counts the rest.
EVIDENCE_LIST_MAX = 20
MORE_SUFFIX = "_more"
_DIGITS = re.compile(r"(\d+)")


class SourceUnavailable(RuntimeError):
    """A source's database could not be reached: an outage, not bad input, so worth a retry."""


@dataclass(frozen=True)
class MetricRow:
    employee_id: str
    metric: str
    value: float
    source: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class CollectResult:
    rows: list[MetricRow]
    # Rows each source yielded for the requested employees (before later sources override).
    counts: dict[str, int] = field(default_factory=dict)
    overridden: int = 0


# ---------------------------------------------------------------- values and evidence


def _number(raw: Any) -> float:
    """A finite float, or ValueError saying what was wrong with it."""
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


def _evidence(raw: Any) -> dict[str, Any]:
    """JSON object text (or an already decoded object, as PostgreSQL json gives) or empty."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        decoded = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"evidence is not valid JSON ({exc})") from None
    if not isinstance(decoded, dict):
        raise ValueError('evidence must be a JSON object, e.g. {"tickets": 12}')
    return decoded


def _id_order(item: Any) -> list[tuple[int, int | str]]:
    """Natural order of record ids: T-9 before T-10, whatever the padding."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(str(item))]


def bounded_evidence(evidence: Mapping[str, Any], limit: int = EVIDENCE_LIST_MAX) -> dict[str, Any]:
    """The evidence with every list sorted by id and cut to `limit` items plus `<key>_more`.

    Sorting first makes which ids are kept, and so the stored evidence, independent of the order
    the database happened to aggregate them in.
    """
    out = dict(evidence)
    for key, value in evidence.items():
        if not isinstance(value, list):
            continue
        ordered = sorted(value, key=_id_order)
        out[key] = ordered[:limit]
        if len(ordered) > limit:
            out[key + MORE_SUFFIX] = len(ordered) - limit
    return out


def _period_evidence(source_id: str, period_start: date, period_end: date) -> dict[str, Any]:
    return {
        "source": source_id,
        "period_start": period_start.isoformat(),
        "period_end": period_end.isoformat(),
    }


# ---------------------------------------------------------------- csv


@dataclass(frozen=True)
class CsvMetric:
    line: int
    employee_id: str
    metric: str
    value: float
    evidence: dict[str, Any]


def parse_metrics_csv(path: str | Path) -> tuple[list[CsvMetric], list[Problem]]:
    """The good rows of an employee_id,metric,value[,evidence] file and the problems of the bad
    ones, each by file, line and field, so that callers can add their own checks before raising.
    Two values for the same employee and metric are a problem. An unreadable file or a bad header
    raises InvalidInput."""
    name = str(path)
    rows, problems = read_csv(path, CSV_REQUIRED, optional=CSV_OPTIONAL)
    metrics: list[CsvMetric] = []
    first_line: dict[tuple[str, str], int] = {}
    for row in rows:
        metric = _csv_metric(row, name)
        if isinstance(metric, list):
            problems += metric
            continue
        key = (metric.employee_id, metric.metric)
        if key in first_line:
            problems.append(
                Problem(
                    f"second value for {key[0]} {key[1]} (first on line {first_line[key]})",
                    name,
                    row.line,
                    "metric",
                )
            )
            continue
        first_line[key] = row.line
        metrics.append(metric)
    return metrics, sorted(problems, key=lambda p: p.line or 0)


def _csv_metric(row: CsvRow, name: str) -> CsvMetric | list[Problem]:
    """The row as a value, or every problem with it."""
    v = row.values
    problems = required_problems(row, CSV_REQUIRED, name)
    value = evidence = None
    try:
        # A blank value is already reported as required; calling it "not a number" says it twice.
        value = _number(v["value"]) if v["value"] else None
    except ValueError as exc:
        problems.append(Problem(str(exc), name, row.line, "value"))
    try:
        evidence = _evidence(v["evidence"])
    except ValueError as exc:
        problems.append(Problem(str(exc), name, row.line, "evidence"))
    if problems or value is None or evidence is None:
        return problems
    return CsvMetric(row.line, v["employee_id"], v["metric"], value, evidence)


def _collect_csv(
    source: CsvSource, period_start: date, period_end: date, employee_ids: Collection[str]
) -> list[MetricRow]:
    records, problems = parse_metrics_csv(source.path)
    if problems:
        raise InvalidInput(problems)
    return [
        MetricRow(
            r.employee_id,
            r.metric,
            r.value,
            source.id,
            {
                **r.evidence,
                **_period_evidence(source.id, period_start, period_end),
                "file": source.path,
                "line": r.line,
            },
        )
        for r in records
        if r.employee_id in employee_ids
    ]


# ---------------------------------------------------------------- sql


def expand_env(
    source: SqlSource, environ: Mapping[str, str] | None = None, position: int = 0
) -> str:
    """The source's URL with every ${VAR} replaced from the environment.

    `position` is the source's index in the policy's `sources`, for the error's field path.
    """
    where = f"sources.{position}.url"
    env = os.environ if environ is None else environ
    problems: list[Problem] = []

    def substitute(match: re.Match[str]) -> str:
        var = match.group(1)
        if not _ENV_NAME.fullmatch(var):
            problems.append(
                Problem(
                    f"source {source.id!r}: ${{{var}}} is not a valid variable name", field=where
                )
            )
            return ""
        if var not in env or not env[var]:
            problems.append(
                Problem(f"source {source.id!r}: environment variable {var} is not set", field=where)
            )
            return ""
        return env[var]

    url = _ENV_VAR.sub(substitute, source.url)
    if problems:
        raise InvalidInput(problems)
    return url


def source_engine(url: str, *, create: bool = False) -> Engine:
    """An engine on someone else's database: no pragmas, no locks, no schema of ours.

    A SQLite file that does not exist is an error unless `create`, since SQLite would otherwise
    quietly create an empty one and every query would fail with a less helpful message.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise FileNotFoundError(f"SQLite database {path} does not exist")
    return create_engine(parsed)


def _sql_rows(
    source: SqlSource, where: str, index: int, result: Any, employee_ids: Collection[str]
) -> tuple[list[tuple[str, str, float, dict[str, Any]]], list[Problem]]:
    columns = list(result.keys())
    missing = [c for c in SQL_COLUMNS if c not in columns]
    if missing:
        return [], [
            Problem(
                f"source {source.id!r} query {index}: no column {', '.join(missing)} (it returns "
                f"{', '.join(columns) or 'nothing'}; expected {', '.join(SQL_COLUMNS)})",
                field=where,
            )
        ]
    rows: list[tuple[str, str, float, dict[str, Any]]] = []
    problems: list[Problem] = []
    for number, row in enumerate(result.mappings(), start=1):
        employee_id = "" if row["employee_id"] is None else str(row["employee_id"])
        if employee_id not in employee_ids or row["value"] is None:
            # NULL means no data for that employee in the window (e.g. no survey answered).
            continue
        metric = "" if row["metric"] is None else str(row["metric"])
        try:
            if not metric:
                raise ValueError("metric is empty")
            evidence = bounded_evidence(_evidence(row["evidence"]))
            rows.append((employee_id, metric, _number(row["value"]), evidence))
        except ValueError as exc:
            problems.append(
                Problem(
                    f"source {source.id!r} query {index}, row {number} ({employee_id} {metric}): "
                    f"{exc}",
                    field=where,
                )
            )
    return rows, problems


def _collect_sql(
    source: SqlSource,
    position: int,
    period_start: date,
    period_end: date,
    employee_ids: Collection[str],
) -> list[MetricRow]:
    url = expand_env(source, position=position)
    params = {
        "period_start": period_start.isoformat(),
        "period_end": (period_end + timedelta(days=1)).isoformat(),
    }
    try:
        engine = source_engine(url)
    except (ArgumentError, FileNotFoundError) as exc:
        raise InvalidInput(
            [Problem(f"source {source.id!r}: {exc}", field=f"sources.{position}.url")]
        ) from None
    out: list[MetricRow] = []
    problems: list[Problem] = []
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise SourceUnavailable(
                f"source {source.id!r}: cannot connect to {make_url(url)!r}: {_first_line(exc)}"
            ) from exc
        with conn:
            for index, query in enumerate(source.queries):
                where = f"sources.{position}.queries.{index}"
                try:
                    result = conn.execute(text(query), params)
                except SQLAlchemyError as exc:
                    problems.append(
                        Problem(
                            f"source {source.id!r} query {index} failed: {_first_line(exc)}",
                            field=where,
                        )
                    )
                    conn.rollback()
                    continue
                rows, row_problems = _sql_rows(source, where, index, result, employee_ids)
                problems += row_problems
                base = _period_evidence(source.id, period_start, period_end)
                out += [
                    MetricRow(emp, metric, value, source.id, {**ev, **base, "query": index})
                    for emp, metric, value, ev in rows
                ]
    finally:
        engine.dispose()
    if problems:
        raise InvalidInput(problems)
    return out


def _first_line(exc: SQLAlchemyError) -> str:
    origin = getattr(exc, "orig", None) or exc
    return str(origin).strip().splitlines()[0] if str(origin).strip() else type(origin).__name__


# ---------------------------------------------------------------- collect


def collect(
    sources: Sequence[Source],
    period_start: date,
    period_end: date,
    employee_ids: Collection[str],
) -> CollectResult:
    """Every source's values for the employees over period_start..period_end (both inclusive).

    Sources are read in order; a later source's value for the same employee and metric replaces
    the earlier one, and its evidence names what it replaced. All problems of all sources are
    reported together.
    """
    wanted = employee_ids if isinstance(employee_ids, set | frozenset) else set(employee_ids)
    merged: dict[tuple[str, str], MetricRow] = {}
    counts: dict[str, int] = {}
    overridden = 0
    problems: list[Problem] = []
    for position, source in enumerate(sources):
        try:
            if isinstance(source, SqlSource):
                rows = _collect_sql(source, position, period_start, period_end, wanted)
            else:
                rows = _collect_csv(source, period_start, period_end, wanted)
        except InvalidInput as exc:
            problems += exc.problems
            continue
        counts[source.id] = len(rows)
        for row in rows:
            key = (row.employee_id, row.metric)
            previous = merged.get(key)
            if previous is not None:
                overridden += 1
                row = _overriding(row, previous)
            merged[key] = row
    if problems:
        raise InvalidInput(problems)
    return CollectResult(sorted(merged.values(), key=_row_key), counts, overridden)


def _overriding(row: MetricRow, previous: MetricRow) -> MetricRow:
    replaced = {"source": previous.source, "value": previous.value}
    if "query" in previous.evidence:
        replaced["query"] = previous.evidence["query"]
    return replace(row, evidence={**row.evidence, "overrides": replaced})


def _row_key(row: MetricRow) -> tuple[str, str]:
    return row.employee_id, row.metric
