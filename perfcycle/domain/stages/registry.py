"""Which handler runs each stage: the engine, status pages and reminders look stages up here."""

from __future__ import annotations

from perfcycle.domain.models import StageName
from perfcycle.domain.stages import (
    appeal,
    calibration,
    data_collection,
    evaluation,
    improvement,
    interview,
    target_setting,
)
from perfcycle.domain.stages.base import StageHandler

HANDLERS: dict[StageName, StageHandler] = {
    StageName.target_setting: target_setting.Handler(),
    StageName.data_collection: data_collection.Handler(),
    StageName.evaluation: evaluation.Handler(),
    StageName.calibration: calibration.Handler(),
    StageName.interview: interview.Handler(),
    StageName.improvement: improvement.Handler(),
    StageName.appeal: appeal.Handler(),
}
