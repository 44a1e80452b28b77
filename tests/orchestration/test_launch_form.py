"""The form HR fills in the Prefect UI (Custom run) is generated from the flow's signature."""

from __future__ import annotations

from prefect.client.schemas.schedules import IntervalSchedule

from perfcycle.domain.policy.registry import list_policies
from perfcycle.orchestration.serve import deployments


def test_launch_form_offers_the_policies_and_explains_each_field() -> None:
    launch = next(d for d in deployments() if d.name == "launch")
    schema = launch._parameter_openapi_schema.model_dump()
    props = schema["properties"]
    assert list(props) == ["policy", "period", "scope", "start_date"]
    assert props["policy"]["enum"] == list_policies() == [
        "external-service", "internal-service", "professional-support"]
    assert schema["required"] == ["policy", "period"]
    assert props["scope"]["type"] == "array" and props["scope"]["default"] == []
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description in the launch form"
    assert launch.enforce_parameter_schema


def test_clock_runs_every_fifteen_minutes() -> None:
    clock = next(d for d in deployments() if d.name == "every-15m")
    assert clock.flow_name == "cycle-clock"
    [only] = clock.schedules or []
    assert isinstance(only.schedule, IntervalSchedule), only.schedule
    assert only.schedule.interval.total_seconds() == 900
