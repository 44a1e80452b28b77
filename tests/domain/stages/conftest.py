"""Fixtures of the stage tests built on tests.support.factories."""

from __future__ import annotations

import pytest

from tests.support.factories import NOW


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock at factories.NOW, inside the open stage's window (`pytestmark` a module)."""
    monkeypatch.setenv("PERFCYCLE_NOW", NOW.isoformat())
