#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ (standard library), sets up everything else.

    python3 dev.py demo [args...]   bring up the stack and run a complete demo review cycle
    python3 dev.py up               start Prefect server, deployments, portal and mail sink
    python3 dev.py test [args...]   run the test suite (pytest arguments pass through)
    python3 dev.py lock             regenerate requirements.lock from pyproject.toml

Every command first makes sure .venv exists and holds requirements.lock and the project; that
step is skipped while requirements.lock and pyproject.toml are unchanged since the last install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"
VENV_PYTHON = VENV_BIN / "python"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
STAMP = VENV / ".perfcycle-installed"
INSTALL_LOG = VENV / "dev-install.log"
CHROMIUM = Path("/usr/bin/chromium")
CJK_FONTS = Path("/usr/share/fonts/opentype/noto")
PYTEST_NO_TESTS = 5
MIN_PYTHON = (3, 11)
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


class DevError(Exception):
    """A set-up step failed; the message says which and where to look."""


def say(message: str) -> None:
    print(f"dev.py: {message}", flush=True)


# ---------------------------------------------------------------- virtual environment


def ensure_environment() -> None:
    ensure_venv()
    digest = requirements_digest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    say("installing dependencies from requirements.lock (the first time takes a few minutes)")
    INSTALL_LOG.write_text("")
    pip(["install", "-r", str(LOCK)], "installing requirements.lock")
    say("installing perfcycle (editable)")
    pip(["install", "--no-deps", "-e", str(ROOT)], "installing the project")
    STAMP.write_text(digest + "\n")
    say("environment ready")


def ensure_venv() -> None:
    if VENV_PYTHON.exists():
        return
    # A .venv without its interpreter (moved, or made by a Python since removed) cannot be fixed
    # in place: --clear rebuilds it, and the missing stamp forces the install.
    say(f"creating the virtual environment {VENV.relative_to(ROOT)}")
    run_checked([sys.executable, "-m", "venv", "--clear", str(VENV)], "creating .venv")
    STAMP.unlink(missing_ok=True)


def requirements_digest() -> str:
    sha = hashlib.sha256()
    for path in (LOCK, PYPROJECT):
        if not path.exists():
            raise DevError(f"{path.relative_to(ROOT)} is missing")
        sha.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


def pip(args: list[str], what: str) -> None:
    """Runs pip quietly into the install log; on failure shows the log's tail."""
    with INSTALL_LOG.open("ab") as log:
        log.write(f"\n$ pip {' '.join(args)}\n".encode())
        log.flush()
        code = subprocess.call(
            [str(VENV_PYTHON), "-m", "pip", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **PIP_ENV},
        )
    if code != 0:
        raise DevError(f"{what} failed (pip exit {code}); last lines of {INSTALL_LOG}:\n{tail()}")


def tail(lines: int = 25) -> str:
    text = INSTALL_LOG.read_text(errors="replace").splitlines()
    return "\n".join(without_index_notices(text)[-lines:])


def without_index_notices(lines: list[str]) -> list[str]:
    # pip's notices about unreadable extra indexes would drown the actual error.
    return [line for line in lines if "is ignored: it is neither" not in line]


def run_checked(command: list[str], what: str) -> None:
    result = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise DevError(f"{what} failed: {' '.join(command)} exited {result.returncode}")


# ---------------------------------------------------------------- test prerequisites


def ensure_test_prerequisites() -> None:
    ensure_chromium()


def ensure_chromium() -> None:
    """Debian's chromium for the Playwright browser tests (Playwright's own download can't work)."""
    # CJK fonts too: without them the screenshots show Chinese names as empty boxes.
    if CHROMIUM.exists() and CJK_FONTS.exists():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Debian's chromium and CJK fonts for the browser tests (apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = "apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk"
        result = subprocess.run(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode == 0 and CHROMIUM.exists():
            return
        if CHROMIUM.exists():
            say("warning: CJK fonts could not be installed; screenshots will lack Chinese glyphs")
            return
        output = (result.stdout + result.stderr).strip().splitlines()[-10:]
        say(f"warning: `{command}` failed (exit {result.returncode}):")
        print("\n".join(output), flush=True)
    browser_tests_warning()


def browser_tests_warning() -> None:
    consequence = "they will FAIL because CI=true" if os.environ.get("CI") else "they will skip"
    say(
        f"warning: {CHROMIUM} not found, needed by the browser tests: {consequence}. "
        "Install it with: sudo apt-get install chromium"
    )


# ---------------------------------------------------------------- commands


def cmd_test(args: list[str]) -> int:
    ensure_test_prerequisites()
    code = run_foreground([str(VENV_PYTHON), "-m", "pytest", *args])
    if code == PYTEST_NO_TESTS:
        say("pytest collected no tests (exit 5): counted as a failure; check the arguments")
    return code


def cmd_lock(args: list[str]) -> int:
    if args:
        raise DevError(f"lock takes no arguments, got {' '.join(args)}")
    with tempfile.TemporaryDirectory(prefix="perfcycle-lock-") as scratch:
        venv = Path(scratch) / "venv"
        python = venv / "bin" / "python"
        say(f"creating a fresh virtual environment in {venv}")
        run_checked([sys.executable, "-m", "venv", str(venv)], "creating the lock venv")
        say("installing .[dev] from pyproject.toml (takes a few minutes)")
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"{ROOT}[dev]"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, **PIP_ENV},
            check=False,
        )
        if install.returncode != 0:
            output = without_index_notices((install.stdout + install.stderr).splitlines())
            raise DevError(
                "installing .[dev] into the lock venv failed:\n" + "\n".join(output[-25:])
            )
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--exclude", "perfcycle"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **PIP_ENV},
        ).stdout
    old = set(read_lock_lines())
    new_lines = [line for line in frozen.splitlines() if line and not line.startswith("#")]
    LOCK.write_text(lock_header() + "\n".join(new_lines) + "\n")
    changed = sorted(set(new_lines) ^ old)
    say(f"wrote {LOCK.name}: {len(new_lines)} packages, {len(changed)} lines changed")
    for line in changed:
        print(f"  {'+' if line in new_lines else '-'} {line}", flush=True)
    return 0


def read_lock_lines() -> list[str]:
    if not LOCK.exists():
        return []
    return [ln for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]


def lock_header() -> str:
    return (
        "# Generated by `python3 dev.py lock`: pip freeze of a fresh venv with .[dev] installed.\n"
        "# dev.py installs this, then the project with --no-deps. Edit pyproject.toml, not this.\n"
    )


def exec_perfcycle(args: list[str]) -> int:
    perfcycle = VENV_BIN / "perfcycle"
    if not perfcycle.exists():
        raise DevError(f"{perfcycle} is missing: delete {STAMP} and run again to reinstall")
    # Replace this process, so Ctrl-C and the exit code reach perfcycle and come back unchanged.
    os.execv(perfcycle, [str(perfcycle), *args])
    return 0  # pragma: no cover - execv does not return


def run_foreground(command: list[str]) -> int:
    """Run a child and return its exit code; Ctrl-C reaches the child, which decides what to do."""
    process = subprocess.Popen(command, cwd=ROOT)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


USAGE = __doc__ or ""


def main(argv: list[str]) -> int:
    if sys.version_info < MIN_PYTHON:
        print(f"dev.py needs Python {'.'.join(map(str, MIN_PYTHON))}+, this is {sys.version}")
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    commands = {"demo", "up", "test", "lock"}
    if command not in commands:
        print(f"dev.py: unknown command {command!r}; one of: {', '.join(sorted(commands))}")
        return 2
    try:
        if command == "lock":
            return cmd_lock(args)
        ensure_environment()
        if command == "test":
            return cmd_test(args)
        return exec_perfcycle([command, *args])
    except DevError as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
