"""The audit chain: events commit or vanish with their change, and writers wait only at commit."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.domain import audit
from perfcycle.domain.models import AuditEvent, Department


def actions(url: str) -> list[str]:
    with session_scope(url) as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_events_are_chained_in_the_order_recorded_when_the_transaction_commits(
    db_url: str,
) -> None:
    with session_scope(db_url) as s:
        audit.record(s, actor="hr", action="a.first", subject="x")
        audit.record(s, actor="hr", action="a.second", subject="x", after={"n": 1})
        # Not in the table before the commit: the chain's tail is taken only then.
        assert s.scalars(select(AuditEvent)).all() == []
    with session_scope(db_url) as s:
        audit.record(s, actor="hr", action="a.third", subject="x")

    assert actions(db_url) == ["a.first", "a.second", "a.third"]
    with session_scope(db_url) as s:
        report = audit.verify(s)
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert report.ok and report.checked == 3
    assert events[0].prev_hash == audit.GENESIS
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]


def test_a_rolled_back_change_leaves_no_event_and_the_next_transaction_starts_clean(
    db_url: str,
) -> None:
    with pytest.raises(RuntimeError), session_scope(db_url) as s:
        s.add(Department(id="d-rolled-back", name="gone", type="internal_service"))
        audit.record(s, actor="hr", action="dept.created", subject="d-rolled-back")
        raise RuntimeError("the request failed after recording")
    with session_scope(db_url) as s:
        audit.record(s, actor="hr", action="after.rollback", subject="x")

    assert actions(db_url) == ["after.rollback"]


def test_a_change_refused_by_the_database_leaves_the_chain_untouched(db_url: str) -> None:
    with session_scope(db_url) as s:
        s.add(Department(id="d1", name="one", type="internal_service"))
        audit.record(s, actor="hr", action="dept.created", subject="d1")
    with pytest.raises(Exception, match="(?i)unique|duplicate"), session_scope(db_url) as s:
        s.add(Department(id="d1", name="again", type="internal_service"))
        audit.record(s, actor="hr", action="dept.created", subject="d1")

    assert actions(db_url) == ["dept.created"]
    with session_scope(db_url) as s:
        assert audit.verify(s).ok


def test_postgresql_writers_wait_for_the_chain_only_while_committing(pg_url: str) -> None:
    """A long transaction that has recorded an event does not hold up other writers."""
    recorded = threading.Event()
    release = threading.Event()

    def slow_request() -> None:
        with session_scope(pg_url) as s:
            audit.record(s, actor="slow", action="slow.done", subject="x")
            s.flush()
            recorded.set()
            release.wait(10)  # the rest of a slow request, after its change and audit record

    slow = threading.Thread(target=slow_request)
    slow.start()
    try:
        assert recorded.wait(10)
        with session_scope(pg_url) as s:
            audit.record(s, actor="quick", action="quick.done", subject="y")
        # Had the quick writer waited for the slow one's chain lock, the slow request would
        # have given up waiting for `release` (10 s) and finished first.
        slow_still_open = slow.is_alive()
    finally:
        release.set()
        slow.join(10)

    assert slow_still_open, "the quick writer waited for the slow one to commit"
    assert actions(pg_url) == ["quick.done", "slow.done"]
    with session_scope(pg_url) as s:
        assert audit.verify(s).ok
