"""`perfcycle policy check FILE...` and `perfcycle policy schema [OUT]` (wired by
perfcycle.cli.main)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from perfcycle.core.settings import get_settings
from perfcycle.domain.policy.jsonschema import SCHEMA_FILE, export_schema
from perfcycle.domain.policy.loader import PolicyError, load_policy


def check_command(files: list[Path]) -> int:
    """Check every file (not just up to the first bad one); 0 when all pass, else 1."""
    failed = False
    for file in files:
        try:
            policy = load_policy(file)
        except PolicyError as err:
            failed = True
            print(err, file=sys.stderr)
            continue
        print(f"OK {file} ({len(policy.indicators)} indicators, {len(policy.stages)} stages)")
    return 1 if failed else 0


def schema_text() -> str:
    return json.dumps(export_schema(), indent=2, ensure_ascii=False) + "\n"


def schema_command(out: Path | None = None) -> int:
    """Write the JSON Schema to `out`, by default the policies directory's; `-` prints it."""
    if out is not None and str(out) == "-":
        sys.stdout.write(schema_text())
        return 0
    target = out if out is not None else get_settings().policies_dir / SCHEMA_FILE
    target.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {target}")
    return 0
