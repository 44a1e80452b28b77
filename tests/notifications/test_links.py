"""Portal links: random tokens stored only as hashes, bound to one task, expiring, used once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from perfcycle.core.db import session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import AuditEvent, TaskToken
from perfcycle.notifications import links
from tests.support.factories import build_cycle, table_rows

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(days=10)


@pytest.fixture
def cycle_id(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
    monkeypatch.setenv("PERFCYCLE_PORTAL_BASE_URL", "https://portal.example.cn/")
    get_settings.cache_clear()
    yield build_cycle(db_url, "evaluation")
    get_settings.cache_clear()


def issue(db_url: str, cycle_id: int, person: str = "e1", ref: str = "evaluation:1") -> str:
    with session_scope(db_url) as s:
        return links.issue_link(s, person, cycle_id, "evaluation", ref, EXPIRES)


def resolve(db_url: str, url: str, at: datetime = NOW) -> TaskToken | None:
    with session_scope(db_url) as s:
        return links.resolve(s, links.token_of(url), at)


def test_a_link_is_the_portal_url_and_only_its_hash_is_stored(db_url: str, cycle_id: int) -> None:
    url = issue(db_url, cycle_id)

    assert url.startswith("https://portal.example.cn/t/")
    token = links.token_of(url)
    assert len(token) >= 43  # 32 random bytes, url-safe
    with session_scope(db_url) as s:
        [row] = s.scalars(select(TaskToken)).all()
    stored = [str(v) for v in table_rows(db_url)["task_tokens"][0]]
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert not any(token in value for value in stored), "the token itself is in the database"
    assert (row.person_id, row.cycle_id, row.task_kind, row.task_ref) == (
        "e1",
        cycle_id,
        "evaluation",
        "evaluation:1",
    )
    assert (row.created_at, row.expires_at, row.used_at) == (NOW, EXPIRES, None)


def test_two_links_for_the_same_task_are_different(db_url: str, cycle_id: int) -> None:
    first, second = issue(db_url, cycle_id), issue(db_url, cycle_id)

    assert first != second
    one, other = resolve(db_url, first), resolve(db_url, second)
    assert one is not None and other is not None and one.id != other.id


def test_resolve_finds_the_task_until_the_link_expires(db_url: str, cycle_id: int) -> None:
    url = issue(db_url, cycle_id, person="e2", ref="evaluation:2")

    found = resolve(db_url, url, EXPIRES - timedelta(seconds=1))
    assert found is not None and (found.person_id, found.task_ref) == ("e2", "evaluation:2")
    assert resolve(db_url, url, EXPIRES) is None


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "A" * 5000])
def test_resolve_knows_nothing_of_other_tokens(db_url: str, cycle_id: int, token: str) -> None:
    issue(db_url, cycle_id)
    with session_scope(db_url) as s:
        assert links.resolve(s, token, NOW) is None


def test_consume_uses_a_link_once_and_resolve_then_says_when(db_url: str, cycle_id: int) -> None:
    url = issue(db_url, cycle_id)
    used_at = NOW + timedelta(hours=2)
    with session_scope(db_url) as s:
        row = links.resolve(s, links.token_of(url), used_at)
        assert row is not None
        links.consume(s, row, used_at)

    again = resolve(db_url, url, used_at + timedelta(minutes=1))
    assert again is not None and again.used_at == used_at
    with session_scope(db_url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "link.used")).all()
        assert (event.actor, event.cycle_id, event.after) == (
            "e1",
            cycle_id,
            {"task_kind": "evaluation", "task_ref": "evaluation:1"},
        )


def test_a_used_link_cannot_be_used_again(db_url: str, cycle_id: int) -> None:
    url = issue(db_url, cycle_id)
    with session_scope(db_url) as s:
        row = links.resolve(s, links.token_of(url), NOW)
        assert row is not None
        links.consume(s, row, NOW)
    before = table_rows(db_url)

    with session_scope(db_url) as s, pytest.raises(InvalidInput) as info:
        row = links.resolve(s, links.token_of(url), NOW)
        assert row is not None
        links.consume(s, row, NOW + timedelta(minutes=5))

    assert str(info.value) == "token: this link was already used at 2026-12-01 09:00 UTC"
    assert table_rows(db_url) == before


def test_a_link_that_expired_after_it_was_opened_cannot_be_used(db_url: str, cycle_id: int) -> None:
    url = issue(db_url, cycle_id)
    with session_scope(db_url) as s, pytest.raises(InvalidInput) as info:
        row = links.resolve(s, links.token_of(url), EXPIRES - timedelta(minutes=1))
        assert row is not None
        links.consume(s, row, EXPIRES)

    assert "this link expired at" in str(info.value)
    stored = resolve(db_url, url, NOW)
    assert stored is not None and stored.used_at is None


def test_a_bad_link_request_says_what_is_wrong_and_writes_nothing(
    db_url: str, cycle_id: int
) -> None:
    before = table_rows(db_url)
    with session_scope(db_url) as s, pytest.raises(InvalidInput) as info:
        links.issue_link(s, "e1", cycle_id, "", "x" * 201, NOW - timedelta(seconds=1))

    assert sorted(p.field or "" for p in info.value.problems) == [
        "expires_at",
        "task_kind",
        "task_ref",
    ]
    assert table_rows(db_url) == before
