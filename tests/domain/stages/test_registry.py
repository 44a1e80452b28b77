"""The stage-handler registry: every stage the policy schema knows has its module's handler."""

from __future__ import annotations

import importlib

from perfcycle.domain.models import StageName
from perfcycle.domain.stages.registry import HANDLERS


def test_every_stage_has_its_own_modules_handler() -> None:
    assert set(HANDLERS) == set(StageName)
    for name, handler in HANDLERS.items():
        module = importlib.import_module(f"perfcycle.domain.stages.{name.value}")
        assert type(handler) is module.Handler, name

