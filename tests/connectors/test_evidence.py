"""Metric evidence names its tickets: the shipped queries against a ticket set built here, the
connector's bound on id lists, and the transparency page that shows them in words.

The ticket sets are written into real SQLite ticket databases (the demo schema); nothing is
mocked. Which tickets count against the employee is spelled out per ticket below, so the
expected ids are read off the table, not recomputed with the queries' own logic.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from perfcycle.connectors.sources import EVIDENCE_LIST_MAX, bounded_evidence, collect
from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.devtools.demo_data import generate_tickets
from perfcycle.domain.models import MetricValue
from perfcycle.domain.policy.loader import load_policy
from perfcycle.domain.policy.schema import SqlSource
from perfcycle.notifications import links
from perfcycle.web import i18n
from perfcycle.web.app import create_app
from perfcycle.web.queries.transparency import evidence_parts
from tests.support.cycle import launch, play_until_waiting_at, prepare_demo_org, run_until_wait

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
START, END = date(2026, 10, 1), date(2026, 12, 31)
COLUMNS = (
    "id, queue, assignee, opened_at, first_response_at, resolved_at, sla_hours, satisfaction,"
    " complaint, complaint_handled_at, reopened, major_incident"
)


def ticket(
    id: str,
    opened: str = "2026-11-02 09:00:00",
    *,
    assignee: str = "E1",
    response_min: float | None = 10,
    resolved_h: float | None = 1,
    sla_hours: float = 4,
    satisfaction: int | None = None,
    complaint: bool = False,
    handled_h: float | None = None,
    reopened: bool = False,
    major: bool = False,
) -> tuple[Any, ...]:
    at = datetime.strptime(opened, "%Y-%m-%d %H:%M:%S")

    def later(hours: float | None) -> str | None:
        return (
            None if hours is None else (at + timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")
        )

    return (
        id,
        "CS",
        assignee,
        opened,
        later(None if response_min is None else response_min / 60),
        later(resolved_h),
        sla_hours,
        satisfaction,
        int(complaint),
        later(handled_h),
        int(reopened),
        int(major),
    )


def write_tickets(path: Path, rows: list[tuple[Any, ...]], *, fresh: bool = True) -> str:
    url = f"sqlite:///{path}"
    if fresh:
        generate_tickets(url, [], START, END)  # the demo schema, no rows
    with sqlite3.connect(path) as conn:
        conn.executemany(f"INSERT INTO tickets ({COLUMNS}) VALUES ({', '.join('?' * 12)})", rows)
    return url


# E1's tickets in the period, and what each one counts against E1. Ids are chosen so that id
# order differs from text order (T-10 after T-9).
KNOWN = [
    ticket("T-1", satisfaction=5),  # nothing against
    ticket("T-2", satisfaction=2, complaint=True, handled_h=3),  # low survey; a complaint
    # complaint handled after 30 h; resolved in 10 h against a 4 h SLA
    ticket("T-3", satisfaction=4, complaint=True, handled_h=30, resolved_h=10),
    ticket("T-4", complaint=True, resolved_h=None),  # never handled, never resolved
    ticket("T-9", satisfaction=3, reopened=True),  # low survey; reopened
    ticket("T-10", satisfaction=1, major=True, sla_hours=24, resolved_h=5),  # major incident
    ticket("T-11", response_min=None, resolved_h=2),  # never answered: not in the response mean
]
OTHERS = [
    # E1's, but before the period / on the day after it: never named.
    ticket("T-0", "2026-09-30 23:59:59", satisfaction=1, complaint=True, major=True),
    ticket("T-12", "2027-01-01 00:00:00", complaint=True, reopened=True, resolved_h=None),
    # someone else's
    ticket("T-5", assignee="E2", satisfaction=1, complaint=True, reopened=True, major=True),
]
# metric -> evidence list key -> the ids that must be named, in id order.
EXPECTED = {
    "satisfaction_pct": {"dissatisfied_tickets": ["T-2", "T-9", "T-10"]},
    "fcr_pct": {"not_first_contact_tickets": ["T-4", "T-9"]},
    "complaint_rate_pct": {"complaint_tickets": ["T-2", "T-3", "T-4"]},
    "complaint_timeliness_pct": {"late_complaint_tickets": ["T-3", "T-4"]},
    "sla_resolution_pct": {"missed_sla_tickets": ["T-3", "T-4"]},
    "major_incidents": {"incident_tickets": ["T-10"]},
    "accuracy_pct": {"reopened_tickets": ["T-9"]},
    # fewer than ten answered / resolved: every one of them is among the slowest
    "first_response_minutes": {"slowest_tickets": ["T-1", "T-2", "T-3", "T-4", "T-9", "T-10"]},
    "resolution_hours": {"slowest_tickets": ["T-1", "T-2", "T-3", "T-9", "T-10", "T-11"]},
}


def shipped_source(policy_file: Path, url: str) -> SqlSource:
    source = load_policy(policy_file).sources[0]
    assert isinstance(source, SqlSource)
    return source.model_copy(update={"url": url})


def evidence_of(url: str, policy_file: Path, employee: str = "E1") -> dict[str, dict[str, Any]]:
    result = collect([shipped_source(policy_file, url)], START, END, {employee})
    return {r.metric: r.evidence for r in result.rows if r.employee_id == employee}


def test_every_ticket_metric_of_the_shipped_policies_is_covered() -> None:
    metrics = set()
    for policy_file in POLICIES:
        for source in load_policy(policy_file).sources:
            assert isinstance(source, SqlSource)
            metrics |= {m for q in source.queries for m in re.findall(r"'(\w+)' AS metric", q)}
    assert metrics == set(EXPECTED)


@pytest.mark.parametrize("policy_file", POLICIES, ids=lambda p: p.stem)
def test_evidence_names_exactly_the_tickets_that_counted_against_the_employee(
    policy_file: Path, tmp_path: Path
) -> None:
    url = write_tickets(tmp_path / "tickets.db", KNOWN + OTHERS)
    evidence = evidence_of(url, policy_file)
    assert evidence, "the policy's queries yielded nothing for E1"
    for metric, ev in evidence.items():
        lists = {k: v for k, v in ev.items() if isinstance(v, list)}
        assert lists == EXPECTED[metric], metric
        assert not any(k.endswith("_more") for k in ev), metric
        assert (ev["period_start"], ev["period_end"]) == ("2026-10-01", "2026-12-31")
        assert ev["rule"]
    # The counts beside the lists agree with them.
    if "complaint_rate_pct" in evidence:
        assert evidence["complaint_rate_pct"]["complaints"] == 3
        assert evidence["complaint_rate_pct"]["tickets"] == len(KNOWN)
    if "satisfaction_pct" in evidence:
        ev = evidence["satisfaction_pct"]
        assert ev["surveys"] - ev["satisfied"] == len(ev["dissatisfied_tickets"])


def test_an_employee_with_nothing_against_them_gets_empty_lists(tmp_path: Path) -> None:
    url = write_tickets(tmp_path / "tickets.db", [ticket("T-1", satisfaction=5)])
    evidence = evidence_of(url, POLICIES[0])
    assert evidence["complaint_rate_pct"]["complaint_tickets"] == []
    assert evidence["major_incidents"]["incident_tickets"] == []
    assert evidence["satisfaction_pct"]["dissatisfied_tickets"] == []


def test_slowest_lists_name_the_ten_slowest(tmp_path: Path) -> None:
    # S-1 answered in 1 minute ... S-14 in 14; resolved in 1 .. 14 hours (S-14 never resolved).
    rows = [
        ticket(f"S-{n}", response_min=n, resolved_h=n if n < 14 else None, sla_hours=100)
        for n in range(1, 15)
    ]
    url = write_tickets(tmp_path / "tickets.db", rows)
    evidence = evidence_of(url, POLICIES[1])  # internal-service has both means
    assert evidence["first_response_minutes"]["slowest_tickets"] == [f"S-{n}" for n in range(5, 15)]
    assert evidence["resolution_hours"]["slowest_tickets"] == [f"S-{n}" for n in range(4, 14)]


def test_a_busy_agents_lists_are_bounded_with_the_rest_counted(tmp_path: Path) -> None:
    n = EVIDENCE_LIST_MAX + 7
    rows = [
        ticket(f"B-{i}", f"2026-10-{1 + i % 28:02d} 10:00:00", complaint=True, resolved_h=None)
        for i in range(1, n + 1)
    ]
    url = write_tickets(tmp_path / "tickets.db", rows)
    evidence = evidence_of(url, POLICIES[0])
    ev = evidence["complaint_rate_pct"]
    assert ev["complaints"] == n
    assert ev["complaint_tickets"] == [f"B-{i}" for i in range(1, EVIDENCE_LIST_MAX + 1)]
    assert ev["complaint_tickets_more"] == 7
    missed = evidence["sla_resolution_pct"]
    assert len(missed["missed_sla_tickets"]) == EVIDENCE_LIST_MAX
    assert missed["missed_sla_tickets_more"] == 7
    # the value still counts every ticket
    assert evidence["sla_resolution_pct"]["tickets"] == n


def test_bounded_evidence_sorts_ids_naturally_and_leaves_other_values() -> None:
    ids = [f"T-{i}" for i in (12, 3, 1, 25, 2, 10, 9)]
    out = bounded_evidence({"x_tickets": ids, "tickets": 7, "rule": "r"}, limit=4)
    assert out == {
        "x_tickets": ["T-1", "T-2", "T-3", "T-9"],
        "x_tickets_more": 3,
        "tickets": 7,
        "rule": "r",
    }
    assert bounded_evidence({"x_tickets": ["T-2", "T-1"]}, limit=2) == {"x_tickets": ["T-1", "T-2"]}


def test_the_page_model_takes_the_evidence_apart() -> None:
    evidence = {
        "complaint_tickets": ["T-2", "T-3"],
        "complaint_tickets_more": 4,
        "complaints": 6,
        "first": "T-1",
        "tickets": 40,
        "mystery": 3,
        "rule": "complaints per 100 tickets",
        "period_start": "2026-10-01",
        "period_end": "2026-12-31",
        "query": 2,
        "source": "tickets",
    }
    facts, lists = evidence_parts(evidence, {"evidence.complaints", "evidence.complaint_tickets"})
    assert [(f.key, f.label) for f in facts] == [
        ("tickets", None),
        ("complaints", "evidence.complaints"),
        ("mystery", None),
        ("first", None),
    ]
    assert [(x.key, x.ids, x.more, x.label) for x in lists] == [
        ("complaint_tickets", ["T-2", "T-3"], 4, "evidence.complaint_tickets")
    ]


# ---------------------------------------------------------------- the transparency page

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
# The agent's own tickets on the page: more complaints than are listed, one major incident.
AGENT_TICKETS = [
    ticket(f"Q-{i}", f"2026-11-{1 + i % 28:02d} 10:00:00", complaint=True, handled_h=2)
    for i in range(1, EVIDENCE_LIST_MAX + 4)
] + [ticket("Q-900", "2026-12-01 10:00:00", major=True, satisfaction=2)]


@pytest.fixture
def agent_page(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, str, TestClient]]:
    """A demo external-service cycle past data collection in which one customer-service agent's
    tickets are exactly AGENT_TICKETS; a browser signed in as that agent."""
    org = prepare_demo_org(db_url, tmp_path)
    tickets_db = tmp_path / "tickets.db"
    with sqlite3.connect(tickets_db) as conn:
        agent = conn.execute(
            "SELECT assignee FROM tickets WHERE queue = 'CS' GROUP BY assignee"
            " ORDER BY COUNT(*) DESC, assignee LIMIT 1"
        ).fetchone()[0]
        conn.execute("DELETE FROM tickets WHERE assignee = ?", (agent,))
    rows = [(*t[:2], agent, *t[3:]) for t in AGENT_TICKETS]
    write_tickets(tickets_db, rows, fresh=False)
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", org.tickets_url)
    monkeypatch.setenv("PERFCYCLE_NOW", T0.isoformat())
    get_settings.cache_clear()
    cycle_id = launch(db_url, "external-service", "2026-Q4")
    assert run_until_wait(db_url, cycle_id).stage == "target_setting"
    play_until_waiting_at(db_url, cycle_id, "evaluation")
    with session_scope(db_url) as s:
        link = links.issue_link(
            s, agent, cycle_id, "results", f"cycle:{cycle_id}", T0 + timedelta(days=90)
        )
    client = TestClient(create_app(db_url), follow_redirects=False)
    assert client.get(f"/t/{links.token_of(link)}").status_code == 303
    yield cycle_id, agent, client
    get_settings.cache_clear()


def metric_row(page: str, metric: str) -> str:
    """The metric's row of the table: up to the next metric's row or the table's end."""
    return re.split(r'<tr id="metric-|</tbody>', page.split(f'<tr id="metric-{metric}"')[1])[0]


def ticket_list(row: str, key: str) -> list[str]:
    block = row.split(f'data-key="{key}"')[1].split("</div>")[0]
    return re.findall(r"<li>([^<]*)</li>", block)


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
def test_the_transparency_page_names_the_tickets_in_words(
    agent_page: tuple[int, str, TestClient], db_url: str, locale: str
) -> None:
    cycle_id, agent, client = agent_page
    page = client.get(f"/me?cycle={cycle_id}&lang={locale}")
    assert page.status_code == 200, page.text

    def t(key: str, **values: Any) -> str:
        return i18n.translate(key, locale, **values)

    row = metric_row(page.text, "complaint_rate_pct")
    name = {"en": "Complaint rate", "zh-CN": "投诉率"}[locale]
    assert f'<span class="metric-name">{name}</span>' in row
    listed = [f"Q-{i}" for i in range(1, EVIDENCE_LIST_MAX + 1)]
    assert ticket_list(row, "complaint_tickets") == listed
    assert t("evidence.complaint_tickets") in row
    assert t("me.more", n=3) in row
    assert f"{t('evidence.complaints')}</th><td>{EVIDENCE_LIST_MAX + 3}</td>" in row
    assert f"{t('evidence.tickets')}</th><td>{len(AGENT_TICKETS)}</td>" in row
    assert t("me.source_named", name=t("source.tickets"), id="tickets") in row
    assert t("me.period_label") in row
    assert t("me.period", start="2026-10-01", end="2026-12-31") in row
    assert t("me.rule", rule="complaints per 100 tickets") in row

    veto = metric_row(page.text, "major_incidents")
    assert ticket_list(veto, "incident_tickets") == ["Q-900"]
    assert {"en": "Major incident", "zh-CN": "重大服务事故"}[locale] in veto
    assert ticket_list(metric_row(page.text, "satisfaction_pct"), "dissatisfied_tickets") == [
        "Q-900"
    ]
    # Raw keys are gone wherever the portal has words for them.
    assert ">complaint_tickets<" not in row and ">tickets</th>" not in row

    # What the page lists is what data collection stored.
    with session_scope(db_url) as s:
        stored = s.scalars(
            select(MetricValue.evidence).where(
                MetricValue.cycle_id == cycle_id,
                MetricValue.employee_id == agent,
                MetricValue.metric == "complaint_rate_pct",
            )
        ).one()
    assert stored["complaint_tickets"] == listed and stored["complaint_tickets_more"] == 3
