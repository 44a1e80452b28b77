"""Multi-rater evaluation, one module per job: raters (who rates whom), handler (the stage),
answers (the one submit path and drafts), send_back (calibration reopens forms) and paper (the
paper-form import). Callers import from here."""

from __future__ import annotations

from perfcycle.domain.stages.evaluation.answers import (
    SCORES,
    AnswerProblem,
    FormItemSpec,
    answer_problems,
    assignment_items,
    items_for,
    items_with_goals,
    load_draft,
    save_draft,
    submit_evaluation,
)
from perfcycle.domain.stages.evaluation.handler import Handler
from perfcycle.domain.stages.evaluation.paper import CSV_COLUMNS, import_evaluations_csv
from perfcycle.domain.stages.evaluation.raters import (
    DRAW_ORDER,
    Organisation,
    Ratee,
    draw_raters,
    load_organisation,
)
from perfcycle.domain.stages.evaluation.send_back import reopen_evaluations
from perfcycle.domain.stages.evaluation.states import EXPIRED, PENDING, SUBMITTED

__all__ = [
    "CSV_COLUMNS",
    "DRAW_ORDER",
    "EXPIRED",
    "PENDING",
    "SCORES",
    "SUBMITTED",
    "AnswerProblem",
    "FormItemSpec",
    "Handler",
    "Organisation",
    "Ratee",
    "answer_problems",
    "assignment_items",
    "draw_raters",
    "import_evaluations_csv",
    "items_for",
    "items_with_goals",
    "load_draft",
    "load_organisation",
    "reopen_evaluations",
    "save_draft",
    "submit_evaluation",
]
