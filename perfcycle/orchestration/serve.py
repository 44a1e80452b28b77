"""Serve every deployment from one process: `python -m perfcycle.orchestration.serve` (perfcycle up
starts it)."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from perfcycle.orchestration.cycle_clock.flow import cycle_clock
from perfcycle.orchestration.mail_relay.flow import mail_relay
from perfcycle.orchestration.review_cycle.flow import review_cycle


def deployments() -> list[RunnerDeployment]:
    # to_deployment is sync here (no running event loop); the cast narrows its dual type.
    return [
        cast(RunnerDeployment, review_cycle.to_deployment(
            name="launch",
            description="Launch a review cycle: pick a policy, a period and a scope.",
            tags=["perfcycle"],
        )),
        cast(RunnerDeployment, cycle_clock.to_deployment(
            name="every-15m",
            interval=timedelta(minutes=15),
            description="Resume cycles whose stage is complete or past its deadline.",
            tags=["perfcycle"],
        )),
        cast(RunnerDeployment, mail_relay.to_deployment(
            name="every-minute",
            interval=timedelta(minutes=1),
            description="Send pending outbox mail over SMTP (also started when a stage writes"
            " mail).",
            tags=["perfcycle"],
        )),
    ]


def main() -> None:
    serve(*deployments(), limit=8)


if __name__ == "__main__":
    main()
