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

# Deployments name their flow by a file path relative to the repository root (where `perfcycle
# serve` and workers run). The flows live in perfcycle/orchestration/, but the paths registered
# stay the flows/ shims': deploy/prefect.yaml and deployments registered by earlier releases name
# them, and a suspended cycle can only resume through the deployment it was launched from.
ENTRYPOINTS = {
    "review-cycle": "flows/review_cycle.py:review_cycle",
    "cycle-clock": "flows/cycle_clock.py:cycle_clock",
    "mail-relay": "flows/mail_relay.py:mail_relay",
}


def deployments() -> list[RunnerDeployment]:
    built = _deployments()
    for deployment in built:
        deployment.entrypoint = ENTRYPOINTS[str(deployment.flow_name)]
    return built


def _deployments() -> list[RunnerDeployment]:
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
