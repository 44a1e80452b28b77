"""Deterministic demo data: a sample organisation and the ticket system its service staff work in.

Everything is derived from a seeded random generator, so the same arguments give the same rows on
every run and every machine. The ticket system is a separate database (SQLite in the demo, also
PostgreSQL) that the shipped policies' `sql` sources query; it is not part of perfcycle's schema.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, MetaData, Table, Text

from perfcycle.connectors.sources import source_engine
from perfcycle.core.errors import InvalidInput, Problem

ORG_COLUMNS = (
    "employee_id",
    "name",
    "email",
    "department_id",
    "department_name",
    "department_type",
    "manager_id",
    "locale",
)
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class _Department:
    id: str
    name: str
    type: str
    share: float
    # Widest span of control before another management level is added.
    span: int


DEPARTMENTS = (
    _Department("CS", "客户服务中心 / Customer Service Centre", "external_service", 0.5, 6),
    _Department("IT", "信息技术部 / IT Service Desk", "internal_service", 0.3, 12),
    _Department("FIN", "财务部 / Finance", "professional_support", 0.2, 12),
)
_GM_DEPARTMENT = "CS"

_SURNAMES = (
    ("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"), ("杨", "yang"),
    ("黄", "huang"), ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"), ("徐", "xu"), ("孙", "sun"),
    ("马", "ma"), ("朱", "zhu"), ("胡", "hu"), ("郭", "guo"), ("何", "he"), ("林", "lin"),
    ("罗", "luo"), ("高", "gao"), ("郑", "zheng"), ("梁", "liang"), ("谢", "xie"), ("宋", "song"),
    ("唐", "tang"), ("韩", "han"), ("冯", "feng"), ("邓", "deng"), ("曹", "cao"), ("彭", "peng"),
)  # fmt: skip
_GIVEN_NAMES = (
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("秀英", "xiuying"), ("敏", "min"),
    ("静", "jing"), ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("勇", "yong"),
    ("艳", "yan"), ("杰", "jie"), ("娟", "juan"), ("涛", "tao"), ("明", "ming"), ("超", "chao"),
    ("秀兰", "xiulan"), ("霞", "xia"), ("平", "ping"), ("刚", "gang"), ("晓东", "xiaodong"),
    ("子涵", "zihan"), ("欣怡", "xinyi"), ("浩然", "haoran"), ("雨轩", "yuxuan"),
    ("思远", "siyuan"), ("佳琪", "jiaqi"), ("建国", "jianguo"), ("海燕", "haiyan"),
    ("志强", "zhiqiang"), ("文博", "wenbo"), ("梓萱", "zixuan"), ("嘉怡", "jiayi"),
)  # fmt: skip
_EN_FIRST = ("Emily", "James", "Olivia", "Daniel", "Sophie", "Michael", "Grace", "David", "Hannah")
_UNIQUE_NAMES_UP_TO = 300
_EN_LAST = ("Carter", "Brooks", "Bennett", "Hughes", "Foster", "Morgan", "Reed", "Walsh", "Parker")


# ---------------------------------------------------------------- organisation


@dataclass
class _Node:
    """One person in the management tree; ids and names are given after the shape is built."""

    department: _Department
    reports: list[_Node] = field(default_factory=list)
    employee_id: str = ""


def _split(count: int, parts: int) -> list[int]:
    base, extra = divmod(count, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _reports(count: int, department: _Department) -> list[_Node]:
    """`count` people under one manager: direct reports up to the span, else teams with leads."""
    if count <= department.span:
        return [_Node(department) for _ in range(count)]
    teams = min(department.span, math.ceil(count / (department.span + 1)))
    return [_Node(department, _reports(size - 1, department)) for size in _split(count, teams)]


def _department_sizes(n_employees: int) -> dict[str, int]:
    sizes = {d.id: max(2, round(n_employees * d.share)) for d in DEPARTMENTS}
    sizes[DEPARTMENTS[-1].id] = n_employees - sum(sizes[d.id] for d in DEPARTMENTS[:-1])
    return sizes


def _org_tree(n_employees: int) -> _Node:
    """The general manager, a head per department reporting to them, and teams below the heads."""
    sizes = _department_sizes(n_employees)
    by_id = {d.id: d for d in DEPARTMENTS}
    gm = _Node(by_id[_GM_DEPARTMENT])
    for dept in DEPARTMENTS:
        # The head is one of the department's people; the GM counts towards their own department.
        under_head = sizes[dept.id] - 1 - (1 if dept.id == _GM_DEPARTMENT else 0)
        gm.reports.append(_Node(dept, _reports(under_head, dept)))
    return gm


def _breadth_first(root: _Node) -> Iterator[tuple[_Node, _Node | None]]:
    queue: list[tuple[_Node, _Node | None]] = [(root, None)]
    while queue:
        node, manager = queue.pop(0)
        yield node, manager
        queue.extend((child, node) for child in node.reports)


class _Names:
    """Realistic, deterministic names with unique @example.com addresses."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._emails: dict[str, int] = {}
        self._names: set[str] = set()

    def _pick(self, make: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        # Namesakes are normal in a big organisation, but in a small demo they only confuse.
        name, local = make()
        for _ in range(20 if len(self._names) < _UNIQUE_NAMES_UP_TO else 0):
            if name not in self._names:
                break
            name, local = make()
        self._names.add(name)
        return name, local

    def _email(self, local: str) -> str:
        seen = self._emails.get(local, 0)
        self._emails[local] = seen + 1
        return f"{local}{seen + 1 if seen else ''}@example.com"

    def person(self, index: int) -> tuple[str, str, str]:
        """(name, email, locale); about one person in ten is an English-speaking hire."""
        if index % 10 == 3:
            name, local = self._pick(self._english)
            return name, self._email(local), "en"
        name, local = self._pick(self._chinese)
        return name, self._email(local), "zh-CN"

    def _english(self) -> tuple[str, str]:
        first, last = self._rng.choice(_EN_FIRST), self._rng.choice(_EN_LAST)
        return f"{first} {last}", f"{first}.{last}".lower()

    def _chinese(self) -> tuple[str, str]:
        surname, surname_py = self._rng.choice(_SURNAMES)
        given, given_py = self._rng.choice(_GIVEN_NAMES)
        return surname + given, f"{given_py}.{surname_py}"


def sample_org(n_employees: int = 40, seed: int = 11) -> list[dict[str, str]]:
    """Rows for the org CSV: 3 departments (one per type), a GM, heads, team leads and staff.

    Managers always come before their reports, so the file reads top-down.
    """
    if n_employees < 8:
        raise InvalidInput([Problem("at least 8 employees are needed", field="n_employees")])
    rng = random.Random(seed)
    names = _Names(rng)
    width = max(4, len(str(n_employees)))
    rows: list[dict[str, str]] = []
    for index, (node, manager) in enumerate(_breadth_first(_org_tree(n_employees))):
        node.employee_id = f"E{index + 1:0{width}d}"
        name, email, locale = names.person(index)
        rows.append(
            {
                "employee_id": node.employee_id,
                "name": name,
                "email": email,
                "department_id": node.department.id,
                "department_name": node.department.name,
                "department_type": node.department.type,
                "manager_id": manager.employee_id if manager else "",
                "locale": locale,
            }
        )
    return rows


def write_org_csv(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=ORG_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) or "" for c in ORG_COLUMNS})
    return path


# ---------------------------------------------------------------- ticket system

_TICKET_METADATA = MetaData()
# Timestamps are ISO text, as many ticket systems export them. On PostgreSQL they compare under
# the "C" collation so that text order is time order whatever the database's default collation.
_TS = Text().with_variant(Text(collation="C"), "postgresql")
TICKETS = Table(
    "tickets",
    _TICKET_METADATA,
    Column("id", Text, primary_key=True),
    Column("queue", Text, nullable=False),
    Column("assignee", Text, nullable=False),
    Column("opened_at", _TS, nullable=False),
    Column("first_response_at", _TS),
    Column("resolved_at", _TS),
    Column("sla_hours", Float, nullable=False),
    Column("satisfaction", Integer),
    Column("complaint", Integer, nullable=False, default=0),
    Column("complaint_handled_at", _TS),
    Column("reopened", Integer, nullable=False, default=0),
    Column("major_incident", Integer, nullable=False, default=0),
    Index("ix_tickets_assignee_opened", "assignee", "opened_at"),
)


@dataclass(frozen=True)
class _Profile:
    """How a department's queue behaves: volume, hours, SLAs and response times."""

    tickets_per_day: float
    first_hour: int
    last_hour: int
    sla_hours: tuple[float, ...]
    best_response_min: float
    worst_response_min: float


_PROFILES = {
    "external_service": _Profile(1.0, 8, 22, (4.0, 24.0), 3.0, 60.0),
    "internal_service": _Profile(0.5, 8, 19, (4.0, 8.0, 24.0), 8.0, 120.0),
    "professional_support": _Profile(0.25, 9, 18, (24.0, 72.0), 45.0, 600.0),
}
# Tickets are also generated this many days either side of the period: a real ticket system holds
# other periods too, and the queries' window must leave them out.
MARGIN_DAYS = 7
_TEAM_LEAD_LOAD = 0.3


# Surveys and accuracy look perfect while complaints keep coming: the calibration cross-check case.
PRAISED = "praised_but_complained"


@dataclass
class _Agent:
    employee_id: str
    queue: str
    profile: _Profile
    load: float
    skill: float
    # Demo storylines the calibration committee should find.
    trait: str = ""


def _manager_depths(employees: Sequence[dict[str, Any]]) -> dict[str, int]:
    manager_of = {str(e["employee_id"]): (e.get("manager_id") or "") for e in employees}
    depths: dict[str, int] = {}
    for emp in manager_of:
        depth, current, seen = 0, emp, {emp}
        while manager_of.get(current):
            current = manager_of[current]
            if current in seen:
                break
            seen.add(current)
            depth += 1
        depths[emp] = depth
    return depths


def _agents(employees: Sequence[dict[str, Any]], rng: random.Random) -> list[_Agent]:
    """Everyone below department head works tickets; team leads take a smaller share."""
    depths = _manager_depths(employees)
    leads = {str(e.get("manager_id")) for e in employees if e.get("manager_id")}
    agents: list[_Agent] = []
    for e in employees:
        emp = str(e["employee_id"])
        if depths[emp] < 2:
            continue
        profile = _PROFILES.get(str(e["department_type"]), _PROFILES["internal_service"])
        load = _TEAM_LEAD_LOAD if emp in leads else 1.0
        agents.append(
            _Agent(emp, str(e["department_id"]), profile, load, round(rng.uniform(0.3, 0.9), 3))
        )
    _cast_storylines([a for a in agents if a.load == 1.0])
    return agents


def _cast_storylines(staff: list[_Agent]) -> None:
    """Per queue: strong and weak performers, and the anomalies calibration should catch."""
    by_queue: dict[str, list[_Agent]] = {}
    for agent in staff:
        by_queue.setdefault(agent.queue, []).append(agent)
    cast = (
        ("strong", 0.97),
        ("weak", 0.08),
        ("strong", 0.92),
        ("weak", 0.18),
        (PRAISED, 0.75),
        ("major_incident", 0.85),
    )
    for agents in by_queue.values():
        for agent, (trait, skill) in zip(agents, cast, strict=False):
            agent.trait, agent.skill = trait, skill


class _Clock:
    """Timestamps as whole seconds since the first generated day, formatted with cached days.

    Formatting is the hot path for 10,000 employees; strftime per timestamp is three times slower.
    """

    def __init__(self, first_day: date) -> None:
        self.first_day = first_day
        self._days: dict[int, str] = {}

    def fmt(self, seconds: int) -> str:
        day, rest = divmod(seconds, 86400)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = (self.first_day + timedelta(days=day)).isoformat()
            self._days[day] = prefix
        hours, rest = divmod(rest, 3600)
        return f"{prefix} {hours:02d}:{rest // 60:02d}:{rest % 60:02d}"

    def at(self, day: date) -> int:
        return (day - self.first_day).days * 86400


def _opened_times(agent: _Agent, days: int, rng: random.Random) -> list[int]:
    count = max(1, round(days * agent.profile.tickets_per_day * agent.load * rng.uniform(0.8, 1.2)))
    first = agent.profile.first_hour * 3600
    open_seconds = agent.profile.last_hour * 3600 - first
    return sorted(
        rng.randrange(days) * 86400 + first + rng.randrange(open_seconds) for _ in range(count)
    )


def _satisfaction(agent: _Agent, complaint: bool, rng: random.Random) -> int | None:
    if rng.random() > 0.55:
        return None  # most customers skip the survey
    if agent.trait == PRAISED:
        return rng.choice((4, 5, 5))
    if complaint and rng.random() < 0.8:
        return rng.choice((1, 2))
    if rng.random() < 0.6 + 0.39 * agent.skill:
        return rng.choice((4, 5))
    return rng.choice((1, 2, 3))


def _complaint(agent: _Agent, position: int, rng: random.Random) -> bool:
    if agent.trait == PRAISED:
        # Every eighth ticket, so any stretch of the period shows a complaint rate above 5%.
        return position % 8 == 3
    return rng.random() < 0.005 + 0.08 * (1 - agent.skill)


def _ticket(
    agent: _Agent, opened: int, position: int, clock: _Clock, rng: random.Random
) -> dict[str, Any]:
    skill, profile = agent.skill, agent.profile
    mean_response = profile.worst_response_min - skill * (
        profile.worst_response_min - profile.best_response_min
    )
    response = 60 + round(rng.expovariate(1 / mean_response) * 60)
    sla = rng.choice(profile.sla_hours)
    resolved_at = None
    reopened = 0
    if rng.random() > 0.03:
        # Resolution times keep clear of the SLA boundary so "within" never depends on < vs <=.
        within = rng.random() < 0.55 + 0.43 * skill
        ratio = rng.uniform(0.1, 0.95) if within else rng.uniform(1.05, 3)
        resolved_at = clock.fmt(opened + max(response, round(sla * ratio * 3600)))
        reopened = int(rng.random() < 0.25 - 0.22 * skill and agent.trait != PRAISED)
    complaint = _complaint(agent, position, rng)
    handled_at = None
    if complaint and rng.random() > 0.05:
        hours = rng.uniform(1, 23.5) if rng.random() < 0.5 + 0.5 * skill else rng.uniform(24.5, 96)
        handled_at = clock.fmt(opened + round(hours * 3600))
    return {
        "queue": agent.queue,
        "assignee": agent.employee_id,
        "opened_at": clock.fmt(opened),
        "first_response_at": clock.fmt(opened + response),
        "resolved_at": resolved_at,
        "sla_hours": sla,
        "satisfaction": _satisfaction(agent, complaint, rng),
        "complaint": int(complaint),
        "complaint_handled_at": handled_at,
        "reopened": reopened,
        "major_incident": 0,
    }


def _major_incident_at(
    opened: list[int], period_start: date, period_end: date, clock: _Clock
) -> int:
    """Index of the first ticket from the middle of the period on: inside any covering window."""
    middle = clock.at(period_start + (period_end - period_start) / 2)
    return next((i for i, t in enumerate(opened) if t >= middle), 0)


def ticket_rows(
    employees: Sequence[dict[str, Any]], period_start: date, period_end: date, seed: int = 7
) -> list[dict[str, Any]]:
    """The demo ticket system's rows, ids in order of opening time."""
    if period_end < period_start:
        raise InvalidInput([Problem("period_end is before period_start", field="period_end")])
    rng = random.Random(seed)
    clock = _Clock(period_start - timedelta(days=MARGIN_DAYS))
    days = (period_end - period_start).days + 1 + 2 * MARGIN_DAYS
    keyed: list[tuple[int, dict[str, Any]]] = []
    agents = _agents(employees, rng)
    for number, agent in enumerate(agents):
        opened = _opened_times(agent, days, rng)
        own = [_ticket(agent, at, i, clock, rng) for i, at in enumerate(opened)]
        if agent.trait == "major_incident":
            own[_major_incident_at(opened, period_start, period_end, clock)]["major_incident"] = 1
        # One integer sort key (time, then agent) sorts far faster than the timestamp strings.
        keyed.extend((at * len(agents) + number, t) for at, t in zip(opened, own, strict=True))
    keyed.sort(key=lambda pair: pair[0])
    tickets = [t for _, t in keyed]
    width = max(6, len(str(len(tickets))))
    for number, ticket in enumerate(tickets, start=1):
        ticket["id"] = f"T-{number:0{width}d}"
    return tickets


def generate_tickets(
    db_url: str,
    employees: Sequence[dict[str, Any]],
    period_start: date,
    period_end: date,
    seed: int = 7,
) -> int:
    """(Re)create the `tickets` table at db_url and fill it; returns the number of tickets.

    Only the `tickets` table is dropped and recreated; anything else in the database is left alone.
    """
    rows = ticket_rows(employees, period_start, period_end, seed)
    engine = source_engine(db_url, create=True)
    try:
        with engine.begin() as conn:
            TICKETS.drop(conn, checkfirst=True)
            TICKETS.create(conn)
            for start in range(0, len(rows), 10_000):
                conn.execute(TICKETS.insert(), rows[start : start + 10_000])
    finally:
        engine.dispose()
    return len(rows)
