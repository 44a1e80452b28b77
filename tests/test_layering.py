"""Domain logic never imports Prefect: only the orchestration edge may."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import perfcycle

# Modules allowed to talk to Prefect (they launch, resume or read flow runs).
EDGE = {"perfcycle.orchestrator", "perfcycle.demo", "perfcycle.cli", "perfcycle.devstack"}


def domain_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(perfcycle.__path__, "perfcycle."):
        if info.name in EDGE or info.name.startswith(("perfcycle.migrations", "perfcycle.portal")):
            continue
        names.append(info.name)
    return names


def test_domain_modules_do_not_import_prefect() -> None:
    modules = domain_modules()
    assert "perfcycle.scoring" in modules and "perfcycle.engine" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(','.join(bad[:5]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"a domain module imports prefect: {out.stdout}"


def test_cli_imports_prefect_only_when_needed() -> None:
    code = "import sys, perfcycle.cli; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
