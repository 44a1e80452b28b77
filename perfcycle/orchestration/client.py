"""The only place outside flows/ and tasks/ that talks to Prefect: launch, read, resume.

Used by the CLI, the portal, the demo and the cycle clock. Domain modules never import this.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

LAUNCH_DEPLOYMENT = "review-cycle/launch"
CLOCK_DEPLOYMENT = "cycle-clock/every-15m"


@dataclass(frozen=True)
class RunInfo:
    id: str
    state_type: str
    state_name: str
    paused: bool
    final: bool
    waits_for_input: bool


def launch(policy: str, period: str, scope: list[str], start_date: date | None) -> str:
    """Create a flow run of review-cycle/launch (what HR's Custom run form does)."""
    params: dict[str, Any] = {"policy": policy, "period": period, "scope": scope}
    if start_date:
        params["start_date"] = start_date.isoformat()
    run = run_deployment(LAUNCH_DEPLOYMENT, parameters=params, timeout=0)
    assert isinstance(run, FlowRun)
    return str(run.id)


def run_info(flow_run_id: str) -> RunInfo:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    state = run.state
    if state is None:
        return RunInfo(flow_run_id, "UNKNOWN", "Unknown", False, False, False)
    keyset = state.state_details.run_input_keyset if state.state_details else None
    return RunInfo(
        id=flow_run_id,
        state_type=state.type.value,
        state_name=state.name or state.type.value,
        paused=state.is_paused(),
        final=state.is_final(),
        waits_for_input=bool(keyset),
    )


def resume(flow_run_id: str, run_input: dict[str, Any] | None = None) -> bool:
    """Resume a paused/suspended run; False if it was not paused (nothing to do)."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        if not run.state or not run.state.is_paused():
            return False
        result = client.resume_flow_run(UUID(flow_run_id), run_input=run_input)
    return result.status.value == "ACCEPT"
