"""An evaluation assignment's states and what each refuses."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

PENDING, SUBMITTED, EXPIRED = "pending", "submitted", "expired"


def state_problem(state: str) -> str | None:
    """Why an assignment in `state` takes no answers (None: it does)."""
    if state == SUBMITTED:
        return "already submitted"
    if state == EXPIRED:
        return "the evaluation window closed"
    return None


def table(model: type[Any]) -> Table:
    """The model's table, typed for core.db's bulk statements."""
    found: Table = model.__table__
    return found
