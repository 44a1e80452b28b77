"""A cycle's policy: the copy stored at launch, read once per Cycle object, whichever release
wrote it.

Cycles last months and keep the rules they were launched with, so the stored copy outlives the
code that wrote it. Each copy carries the version of its shape (`cycles.snapshot_version`);
reading applies the `UPGRADES` from that version to `SNAPSHOT_VERSION`, then drops keys the current
schema no longer has, then validates. A release that removes or renames a policy key therefore
adds an upgrade (for a rename) or nothing (for a removal) instead of stopping running cycles.
Policy files stay strict (loader.py): there an unknown key is a typo its author must hear about.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.models import Cycle
from perfcycle.domain.policy.schema import Policy, item_type, pick_model

# The shape new launches write. Raising it means adding UPGRADES[old] and a fixture of the old
# shape (tests/domain/fixtures/policy_snapshot_v<old>.json).
SNAPSHOT_VERSION = 2


def _days_furthest_first(reminders: Any) -> None:
    if isinstance(reminders, dict) and isinstance(reminders.get("days_before"), list):
        reminders["days_before"] = sorted(set(reminders["days_before"]), reverse=True)


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 stores reminder days as they are used: furthest from the deadline first, once
    each (version 1 kept the file's order)."""
    notifications = data.get("notifications")
    if isinstance(notifications, dict):
        _days_furthest_first(notifications.get("reminders"))
        for override in (notifications.get("stages") or {}).values():
            if isinstance(override, dict):
                _days_furthest_first(override.get("reminders"))
    return data


# version -> the function turning a snapshot of that version into one of the next version.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def snapshot_of(policy: Policy) -> dict[str, Any]:
    """What a launch stores: the policy as JSON, in the shape of SNAPSHOT_VERSION."""
    return _v1_to_v2(policy.model_dump(mode="json", by_alias=True))


def upgrade(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A snapshot of `version` brought to SNAPSHOT_VERSION (a copy; `data` is left alone)."""
    if version > SNAPSHOT_VERSION:
        raise InvalidInput(
            [
                Problem(
                    f"written by a newer release (version {version}; this one reads up to "
                    f"{SNAPSHOT_VERSION})",
                    field="policy_snapshot",
                )
            ]
        )
    # Upgrades edit in place: give them a copy, never the dict the ORM holds for the cycle.
    upgraded = copy.deepcopy(data)
    for step in range(version, SNAPSHOT_VERSION):
        upgraded = UPGRADES[step](upgraded)
    return upgraded


def read_snapshot(data: dict[str, Any], version: int) -> Policy:
    """A stored snapshot as today's Policy: upgraded, keys this release dropped ignored."""
    known = _known_keys_only(Policy, upgrade(data, version))
    try:
        return Policy.model_validate(known)
    except ValidationError as err:
        raise InvalidInput(
            [
                Problem(f"version {version} cannot be read: {e['msg']}", field=_dotted(e["loc"]))
                for e in err.errors()
            ]
        ) from None


@dataclass(frozen=True)
class _Read:
    snapshot: object  # held, so its id cannot be reused by another dict while cached
    version: int
    policy: Policy


# An attribute of the Cycle object itself, not a mapped column: the parse lives exactly as long as
# the object, and a new snapshot assigned to it (or reloaded from the database) is parsed afresh.
_CACHE = "_policy_read"


def cycle_policy(cycle: Cycle) -> Policy:
    """The policy the cycle was launched with, parsed once per Cycle object."""
    snapshot = cycle.policy_snapshot
    # Not flushed yet: the column default, today's shape.
    version = SNAPSHOT_VERSION if cycle.snapshot_version is None else cycle.snapshot_version
    cached: _Read | None = getattr(cycle, _CACHE, None)
    if cached is not None and cached.snapshot is snapshot and cached.version == version:
        return cached.policy
    if not snapshot:
        raise InvalidInput([Problem(f"cycle {cycle.id} has no policy", field="policy_snapshot")])
    policy = read_snapshot(snapshot, version)
    setattr(cycle, _CACHE, _Read(snapshot, version, policy))
    return policy


def cycle_policy_or_none(cycle: Cycle) -> Policy | None:
    """cycle_policy, or None for a cycle stored without a policy.

    Only fixtures that exercise mail alone create those (the relay's tests and benchmark, stage
    tests building a cycle by hand); their mail follows the default notifications.
    """
    return cycle_policy(cycle) if cycle.policy_snapshot else None


@cache
def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Key (alias or field name, both are read) -> annotation."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[name] = fields[info.alias or name] = info.annotation
    return fields


def _known_keys_only(annotation: Any, value: Any) -> Any:
    model = pick_model(annotation, value)
    if model is not None and isinstance(value, dict):
        fields = _fields(model)
        return {k: _known_keys_only(fields[k], v) for k, v in value.items() if k in fields}
    inner = item_type(annotation)
    if inner is None:
        return value
    if isinstance(value, list):
        return [_known_keys_only(inner, v) for v in value]
    if isinstance(value, dict):
        return {k: _known_keys_only(inner, v) for k, v in value.items()}
    return value


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(["policy_snapshot", *map(str, loc)])
