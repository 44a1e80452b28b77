"""More simultaneous requests than the database pool has connections: served, not deadlocked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from perfcycle.core.settings import get_settings
from perfcycle.web.app import create_app
from tests.support.portal import first_report, signed_in, start_cycle

# Above the pool (5 + 10 overflow) plus the worker threads (40) that block waiting for it: the
# size at which, without perfcycle.web.app.AdmissionLimit, every thread waited for a
# connection while every connection's request waited for a thread.
BURST = 80


@pytest.mark.timeout(120)
def test_a_burst_bigger_than_the_pool_gets_every_page(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cycle_id = start_cycle(pg_url, tmp_path, monkeypatch)
    employee, _ = first_report(pg_url, cycle_id)
    cookies = dict(signed_in(pg_url, employee, cycle_id, "goals", "target_setting:1").cookies)
    app = create_app(pg_url)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies=cookies, timeout=90
        ) as client:
            pages = [client.get(f"/goals?cycle={cycle_id}") for _ in range(BURST)]
            return await asyncio.gather(*pages)

    try:
        responses = asyncio.run(burst())
    finally:
        get_settings.cache_clear()

    assert [r.status_code for r in responses] == [200] * BURST
    assert all('id="mine"' in r.text for r in responses)  # the person's own goal sheet
