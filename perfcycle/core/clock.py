"""One place that reads the time, so deadlines can be tested under a frozen or advanced clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime


def now() -> datetime:
    """Current UTC time; PERFCYCLE_NOW (ISO 8601) pins it for tests and rehearsals."""
    pinned = os.environ.get("PERFCYCLE_NOW")
    if pinned:
        value = datetime.fromisoformat(pinned)
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)
