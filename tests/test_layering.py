"""The folder tree is the architecture: each package may import only the layers beneath it.

    cli, devtools            -> anything below
    web, orchestration       -> domain, notifications, connectors, core (never each other, except
                                that web resumes runs through orchestration.client, the Prefect
                                client edge that imports no flow)
    domain, notifications,
    connectors               -> each other and core; never Prefect, FastAPI or the edges
    core                     -> nothing of perfcycle above it
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import perfcycle

PACKAGE = Path(perfcycle.__file__).resolve().parent
INNER = {"domain", "notifications", "connectors", "core"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "domain": INNER,
    "notifications": INNER,
    "connectors": INNER,
    "web": INNER | {"web", "orchestration.client"},
    "orchestration": INNER | {"orchestration"},
    "cli": INNER | {"web", "orchestration", "cli", "devtools"},
    "devtools": INNER | {"web", "orchestration", "cli", "devtools"},
}
# Migrations exist to bring the database to the models: the one upward import, by design.
EXCEPTIONS = {"core/migrate.py": {"domain.models"}}
FRAMEWORKS = ("prefect", "fastapi", "starlette", "uvicorn")


def perfcycle_imports(path: Path) -> set[str]:
    """Every perfcycle module a file imports, as 'subpackage.rest' (top level included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n.removeprefix("perfcycle.") for n in names if n.startswith("perfcycle."))
    return found


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def source_files() -> list[Path]:
    return [
        p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts and p.parent != PACKAGE
    ]


def test_every_module_lives_in_a_subsystem_package() -> None:
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]
    assert {layer_of(p) for p in source_files()} == set(ALLOWED)


def test_each_package_imports_only_the_layers_it_may() -> None:
    wrong = []
    for path in source_files():
        allowed = ALLOWED[layer_of(path)] | EXCEPTIONS.get(str(path.relative_to(PACKAGE)), set())
        for name in sorted(perfcycle_imports(path)):
            permitted = any(name == a or name.startswith(a + ".") for a in allowed)
            if not permitted and name.split(".")[0] in ALLOWED:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports perfcycle.{name}")
    assert wrong == []


def test_inner_layers_do_not_load_prefect_or_fastapi() -> None:
    modules = sorted(
        "perfcycle." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(
            ".__init__"
        )
        for p in source_files()
        if layer_of(p) in INNER
    )
    assert "perfcycle.domain.scoring" in modules and "perfcycle.domain.engine" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})\n"
        "print(','.join(bad[:5]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"an inner module loads a framework: {out.stdout}"


def test_cli_imports_prefect_only_when_needed() -> None:
    code = "import sys, perfcycle.cli.main; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_portal_routes_share_through_pages_and_queries_never_each_other() -> None:
    """A route module imports common things from web.deps / web.pages and its page's read model
    from web.queries, never another route module; read models know nothing of requests."""
    web = PACKAGE / "web"
    wrong = []
    for path in sorted((web / "routes").glob("*.py")):
        if path.name != "__init__.py":
            wrong += [
                f"{path.name} imports {n}"
                for n in perfcycle_imports(path)
                if n.startswith("web.routes")
            ]
    for path in sorted((web / "queries").glob("*.py")):
        tree = ast.parse(path.read_text())
        frameworks = {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        wrong += [
            f"{path.name} imports {n}" for n in sorted(frameworks) if n.split(".")[0] in FRAMEWORKS
        ]
        wrong += [
            f"{path.name} imports {n}"
            for n in sorted(perfcycle_imports(path))
            if n.startswith(("web.routes", "web.pages", "web.deps", "web.app"))
        ]
    assert wrong == []


def test_test_modules_share_helpers_only_through_tests_support() -> None:
    """A test module is not a helper library: what several need lives in tests/support/."""
    tests_dir = Path(__file__).resolve().parent
    wrong = []
    for path in sorted(tests_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            wrong += [
                f"{path.relative_to(tests_dir.parent)} imports {n}"
                for n in names
                if n.startswith("tests.") and not n.startswith("tests.support")
            ]
    assert wrong == []
