"""Human-readable summaries of a stage, for Prefect artifacts and the terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from perfcycle.domain.models import Cycle, StageInstance
from perfcycle.notifications import vocabulary


def stage_heading(name: str) -> str:
    """'Target setting / 目标设定': artifacts are read by HR and engineers alike."""
    words = vocabulary.STAGE_TITLES.get(name)
    return f"{words.en} / {words.zh_CN}" if words else name


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= 300 else text[:297] + "..."
    return str(value)


def stage_markdown(
    cycle: Cycle, inst: StageInstance, phase: str, done: int | None = None, total: int | None = None
) -> str:
    lines = [
        f"## {stage_heading(inst.name)} — {phase}",
        "",
        f"Cycle **{cycle.id}** · policy `{cycle.policy}` · period **{cycle.period}** · "
        f"attempt {inst.attempt}",
        "",
        "| | |",
        "|---|---|",
        f"| state | {inst.state} |",
        f"| opened | {inst.opened_at:%Y-%m-%d %H:%M} UTC |",
        f"| due | {inst.due_at:%Y-%m-%d %H:%M} UTC |",
    ]
    if inst.closed_at:
        lines.append(f"| closed | {inst.closed_at:%Y-%m-%d %H:%M} UTC ({inst.close_reason}) |")
    if total is not None:
        lines.append(f"| progress | {done} / {total} |")
    section = (inst.summary or {}).get("closed" if phase == "closed" else "entered", {})
    for key, value in section.items():
        lines.append(f"| {key} | {_cell(value)} |")
    return "\n".join(lines) + "\n"


def results_text(rows: Sequence[dict[str, Any]]) -> str:
    """A cycle's results (perfcycle.domain.results.results_table) as a fixed-width table."""
    if not rows:
        return "no results yet"
    cats = list(rows[0]["categories"])
    header = " ".join(f"{c[:10]:>10}" for c in cats)
    lines = [f"{'employee':<10} {header} {'total':>7}  grade"]
    for r in rows:
        lines.append(
            f"{r['employee_id']:<10} "
            + " ".join(f"{r['categories'][c]:>10.1f}" for c in cats)
            + f" {r['total']:>7.1f}  {r['grade']}"
        )
    return "\n".join(lines)
