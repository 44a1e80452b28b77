"""The mail-relay flow against a real (test) Prefect server: it creates the SMTP rate limit it
occupies, is really throttled by it, publishes an artifact, and a stage step starts it once per
new mail without ever failing the stage when it cannot."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import cast
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.deployments.runner import RunnerDeployment
from sqlalchemy import update

from perfcycle.core import clock
from perfcycle.core.db import session_scope
from perfcycle.core.settings import get_settings
from perfcycle.domain.models import Cycle, OutboxMessage
from perfcycle.notifications import outbox
from perfcycle.notifications.mailsink import MailSink, list_messages
from perfcycle.orchestration.mail_relay.flow import mail_relay
from perfcycle.orchestration.mail_relay.tasks import RATE_LIMIT, rate_limit_shape
from perfcycle.orchestration.review_cycle import tasks as stages
from tests.support.smtp import goals_mail

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def sink(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MailSink]:
    with MailSink(tmp_path / "mail") as running:
        monkeypatch.setenv("PERFCYCLE_DATABASE_URL", db_url)
        monkeypatch.setenv("PERFCYCLE_SMTP_PORT", str(running.port))
        get_settings.cache_clear()
        yield running
    get_settings.cache_clear()


def add_cycle(url: str) -> int:
    with session_scope(url) as session:
        cycle = Cycle(
            policy="external-service",
            policy_digest="-",
            policy_snapshot={},
            period="2026-Q4",
            period_start=date(2026, 10, 1),
            period_end=date(2026, 12, 31),
            scope_key="",
            start_date=date(2027, 1, 4),
            created_at=clock.now(),
        )
        session.add(cycle)
        session.flush()
        return cycle.id


@pytest.mark.usefixtures("sink")
def test_the_flow_sends_everything_throttled_by_its_rate_limit(db_url: str, tmp_path: Path) -> None:
    total = 120
    with session_scope(db_url) as session:
        outbox.enqueue(session, [goals_mail(n) for n in range(total)])
    shape = rate_limit_shape(get_settings().mail_rate_per_second)
    assert shape is not None, "the default settings rate-limit the relay"
    slots, rate = shape

    started = time.monotonic()
    # One batch of them all: rendered in render processes started from the task's thread.
    summary = mail_relay(batch_size=total)
    elapsed = time.monotonic() - started

    assert (summary["sent"], summary["retried"], summary["failed"]) == (total, 0, 0)
    assert summary["outbox"]["sent"] == total
    assert len(list_messages(tmp_path / "mail")) == total
    # The first `slots` messages pass at once, the rest at `rate` per second (the batch asks
    # for its slots in pieces no bigger than the limit).
    assert elapsed >= 0.85 * (total - slots) / rate
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(RATE_LIMIT)
        artifacts = client.read_artifacts()
    assert (limit.limit, limit.slot_decay_per_second) == (slots, rate)
    markdown = next(a for a in artifacts if a.key == "mail-relay").data
    assert isinstance(markdown, str) and f"| sent | {total} |" in markdown

    # Idempotent: a second run finds nothing to send.
    assert mail_relay()["sent"] == 0
    assert len(list_messages(tmp_path / "mail")) == total


@flow
def stage_step_done(cycle_id: int) -> None:
    stages._start_mail_relay(cycle_id)


def relay_runs(deployment_id: UUID) -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return len(runs)


@pytest.mark.usefixtures("sink")
def test_a_stage_step_starts_the_relay_once_per_new_mail_and_never_fails(db_url: str) -> None:
    cycle_id = add_cycle(db_url)
    with session_scope(db_url) as session:
        outbox.enqueue(session, [replace(goals_mail(1), cycle_id=cycle_id)])

    stage_step_done(cycle_id)  # no mail-relay deployment yet: a warning, not a failure

    deployment = cast(RunnerDeployment, mail_relay.to_deployment(name="every-minute"))
    deployment_id = deployment.apply()
    assert isinstance(deployment_id, UUID)
    stage_step_done(cycle_id)
    stage_step_done(cycle_id)  # a re-run step with no new mail starts nothing new
    assert relay_runs(deployment_id) == 1

    with session_scope(db_url) as session:
        outbox.enqueue(session, [replace(goals_mail(2), cycle_id=cycle_id)])
    stage_step_done(cycle_id)
    assert relay_runs(deployment_id) == 2

    with session_scope(db_url) as session:
        session.execute(update(OutboxMessage).values(state="sent"))
    stage_step_done(cycle_id)  # nothing pending: nothing to start
    assert relay_runs(deployment_id) == 2
