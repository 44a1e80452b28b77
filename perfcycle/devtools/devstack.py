"""The local stack without Docker: `perfcycle up`, the demo and the end-to-end tests use it.

Four child processes, each in its own process group so that stopping kills the whole tree:
a Prefect server (its own SQLite under <home>/prefect), the deployments (`python -m
perfcycle.orchestration.serve`),
the portal (uvicorn) and the mail sink. Each child writes to <home>/logs/<name>.log.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from sqlalchemy.engine import make_url

HOST = "127.0.0.1"
DEFAULT_PORTS = {"prefect": 4200, "portal": 8700, "mail": 8025}
SERVICE_NAMES = {
    "prefect": "Prefect server",
    "flows": "deployments (perfcycle.orchestration.serve)",
    "portal": "portal",
    "mail": "mail sink",
}
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30


class StackError(RuntimeError):
    """The stack could not start; the message names the service and shows its log's tail."""


@dataclass(frozen=True)
class Ports:
    prefect: int = DEFAULT_PORTS["prefect"]
    portal: int = DEFAULT_PORTS["portal"]
    mail: int = DEFAULT_PORTS["mail"]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pgid(self) -> int:
        # start_new_session=True makes the child the leader of a group numbered by its pid.
        return self.process.pid


def pick_free_ports(count: int, host: str = HOST) -> list[int]:
    """Distinct ports free right now (held open together so the OS cannot repeat one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        # Same option uvicorn and asyncio servers use, so a TIME_WAIT leftover is not "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def absolute_database_url(url: str) -> str:
    """Children run with other working directories in mind: make a relative SQLite path absolute."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies awaiting a reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name is in parentheses and may hold spaces: fields follow the last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


class Stack:
    """Start with `with Stack(...) as stack:`; everything is stopped on exit, also on Ctrl-C.

    `free_ports=True` picks free ports (tests, demo); otherwise `ports` (default 4200, 8700,
    8025) and a taken port fails at once naming it. `with_flows=False` leaves out the
    deployments process (only for tests of the stack itself).
    """

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        ports: Ports | None = None,
        free_ports: bool = False,
        with_flows: bool = True,
        database_url: str | None = None,
        flows_module: str = "perfcycle.orchestration.serve",
        ready_timeout: float = 90.0,
        progress: Callable[[str], None] | None = None,
    ):
        from perfcycle.core.settings import Settings

        settings = Settings()
        self.home = Path(home if home is not None else settings.home).resolve()
        if free_ports:
            ports = Ports(*pick_free_ports(3))
        self.ports = ports or Ports()
        self.with_flows = with_flows
        self.flows_module = flows_module
        self.ready_timeout = ready_timeout
        self._progress = progress
        self.database_url = absolute_database_url(
            database_url or settings.database_url or f"sqlite:///{self.home / 'perfcycle.db'}"
        )
        self.logs_dir = self.home / "logs"
        self.mail_dir = self.home / "mail"
        self.prefect_home = self.home / "prefect"
        self.bin_dir = Path(sys.executable).parent
        self.children: dict[str, Child] = {}

    # ------------------------------------------------------------ what clients need

    @property
    def urls(self) -> dict[str, str]:
        prefect = f"http://{HOST}:{self.ports.prefect}"
        return {
            "prefect_ui": prefect,
            "prefect_api": f"{prefect}/api",
            "portal": f"http://{HOST}:{self.ports.portal}",
            "smtp": f"smtp://{HOST}:{self.ports.mail}",
            "mail_dir": str(self.mail_dir),
        }

    @functools.cached_property
    def secret_key(self) -> str:
        # Read (or made) on first use, not in __init__: a stack that fails its checks writes
        # nothing into its home.
        return home_secret_key(self.home)

    @property
    def env(self) -> dict[str, str]:
        """What the children get on top of os.environ; give the same to clients of the stack."""
        urls = self.urls
        return {
            "PERFCYCLE_HOME": str(self.home),
            "PERFCYCLE_DATABASE_URL": self.database_url,
            "PERFCYCLE_SECRET_KEY": self.secret_key,
            "PERFCYCLE_SMTP_HOST": HOST,
            "PERFCYCLE_SMTP_PORT": str(self.ports.mail),
            "PERFCYCLE_PORTAL_BASE_URL": urls["portal"],
            "PERFCYCLE_PREFECT_UI_URL": urls["prefect_ui"],
            "PREFECT_API_URL": urls["prefect_api"],
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            # A resumed run waits for the runner's next poll: locally, 2 s instead of 10 s.
            "PREFECT_RUNNER_POLL_FREQUENCY": os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
        }

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Stack:
        self._check_ports()
        for folder in (self.logs_dir, self.mail_dir, self.prefect_home):
            folder.mkdir(parents=True, exist_ok=True)
        self._say(f"migrating the database {self.database_url}")
        from perfcycle.core.migrate import upgrade

        upgrade(self.database_url)
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        python = str(self.bin_dir / "python")
        self._spawn(
            "prefect",
            [
                str(self._prefect_bin()),
                "server",
                "start",
                "--host",
                HOST,
                "--port",
                str(self.ports.prefect),
            ],
        )
        self._spawn(
            "portal",
            [
                python,
                "-m",
                "perfcycle.cli.main",
                "portal",
                "--host",
                HOST,
                "--port",
                str(self.ports.portal),
            ],
        )
        self._spawn(
            "mail",
            [
                python,
                "-m",
                "perfcycle.notifications.mailsink",
                "--host",
                HOST,
                "--port",
                str(self.ports.mail),
                "--dir",
                str(self.mail_dir),
            ],
        )
        deadline = time.monotonic() + self.ready_timeout
        self._wait_until("mail", self._smtp_answers, deadline)
        self._wait_until("portal", lambda: _http_ok(f"{self.urls['portal']}/healthz"), deadline)
        self._say(f"waiting for the Prefect server on port {self.ports.prefect}")
        self._wait_until(
            "prefect", lambda: _http_ok(f"{self.urls['prefect_api']}/health"), deadline
        )
        if self.with_flows:
            self._start_flows()

    def _start_flows(self) -> None:
        # serve() re-applies every deployment at start-up: it is ready once one is newer than
        # anything the server held before.
        before = self._latest_deployment_update()
        self._spawn("flows", [str(self.bin_dir / "python"), "-m", self.flows_module])
        deadline = time.monotonic() + self.ready_timeout
        self._say("waiting for the deployments to be served")
        self._wait_until("flows", lambda: self._latest_deployment_update() > before, deadline)

    def stop(self) -> None:
        """SIGTERM each child's process group, wait up to STOP_GRACE_S, then SIGKILL.

        The deployments process goes first: on SIGTERM it pauses its deployments through the
        Prefect API, which hangs if the server is already gone. A second Ctrl-C kills at once.
        """
        children = list(reversed(self.children.values()))
        phases = [
            [c for c in children if c.name == "flows"],
            [c for c in children if c.name != "flows"],
        ]
        try:
            for phase in phases:
                for child in phase:
                    _signal_group(child.pgid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE_S
                for child in phase:
                    _wait_group(child, deadline)
        except KeyboardInterrupt:
            pass
        for child in children:
            if group_alive(child.pgid):
                self._say(f"{SERVICE_NAMES[child.name]} did not stop in time: killing it")
                _signal_group(child.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
            child.log_file.close()
        self.children.clear()

    def dead_children(self) -> list[str]:
        """Names of children that exited while the stack should be running."""
        return [name for name, child in self.children.items() if child.process.poll() is not None]

    def describe_exit(self, name: str) -> str:
        child = self.children[name]
        return (
            f"{SERVICE_NAMES[name]} exited with code {child.process.returncode}; "
            f"last lines of {child.log_path}:\n{tail(child.log_path)}"
        )

    # ------------------------------------------------------------ helpers

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def _check_ports(self) -> None:
        wanted = {
            "prefect": self.ports.prefect,
            "portal": self.ports.portal,
            "mail": self.ports.mail,
        }
        taken = [
            f"port {port} ({SERVICE_NAMES[name]}) is already in use on {HOST}"
            for name, port in wanted.items()
            if not port_is_free(port)
        ]
        if len(set(wanted.values())) != len(wanted):
            taken.append(f"the services need three different ports, got {wanted}")
        if taken:
            raise StackError(
                "; ".join(taken) + ". Stop what holds it (another `perfcycle up`?) "
                "or let the stack pick free ports."
            )

    def _prefect_bin(self) -> Path:
        prefect = self.bin_dir / "prefect"
        if not prefect.exists():
            raise StackError(
                f"{prefect} not found: run from the project's virtual environment "
                "(python3 dev.py sets it up)"
            )
        return prefect

    def _spawn(self, name: str, command: list[str]) -> None:
        self._say(f"starting {SERVICE_NAMES[name]}")
        log_path = self.logs_dir / f"{name}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.children[name] = Child(name, process, log_path, log_file)

    def _wait_until(self, name: str, ready: Callable[[], bool], deadline: float) -> None:
        child = self.children[name]
        while True:
            if child.process.poll() is not None:
                raise StackError(f"{SERVICE_NAMES[name]} did not start: {self.describe_exit(name)}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{SERVICE_NAMES[name]} was not ready within {self.ready_timeout:.0f} s; "
                    f"last lines of {child.log_path}:\n{tail(child.log_path)}"
                )
            time.sleep(0.25)

    def _smtp_answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.ports.mail), timeout=2) as sock:
                return sock.recv(3) == b"220"
        except OSError:
            return False

    def _latest_deployment_update(self) -> str:
        """The newest `updated` timestamp among the server's deployments ("" when none)."""
        request = urllib.request.Request(
            f"{self.urls['prefect_api']}/deployments/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                deployments: list[dict[str, Any]] = json.load(response)
        except (OSError, ValueError):
            return ""
        return max((str(d.get("updated") or "") for d in deployments), default="")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group(child: Child, deadline: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    while group_alive(child.pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# ---------------------------------------------------------------- perfcycle up


def build_up_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfcycle up",
        description="Start the Prefect server, the deployments, the portal and a mail sink.",
    )
    add_up_arguments(parser)
    return parser


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=None, help="default: $PERFCYCLE_HOME")
    parser.add_argument("--prefect-port", type=int, default=DEFAULT_PORTS["prefect"])
    parser.add_argument("--portal-port", type=int, default=DEFAULT_PORTS["portal"])
    parser.add_argument("--mail-port", type=int, default=DEFAULT_PORTS["mail"])


def up_command(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run the stack until Ctrl-C or SIGTERM; returns 0 after a clean stop, 1 on a failure.

    `args` is the parsed `perfcycle up` namespace (options from add_up_arguments are optional)
    or an argv list.
    """
    if not isinstance(args, argparse.Namespace):
        args = build_up_parser().parse_args(args)
    ports = Ports(
        getattr(args, "prefect_port", None) or DEFAULT_PORTS["prefect"],
        getattr(args, "portal_port", None) or DEFAULT_PORTS["portal"],
        getattr(args, "mail_port", None) or DEFAULT_PORTS["mail"],
    )
    # Ctrl-C and SIGTERM both mean "stop everything", also when started with SIGINT ignored.
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with Stack(getattr(args, "home", None), ports=ports, progress=_print) as stack:
            _print_urls(stack)
            return _run_until_interrupted(stack)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything is stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_until_interrupted(stack: Stack) -> int:
    try:
        while True:
            dead = stack.dead_children()
            if dead:
                for name in dead:
                    print(f"error: {stack.describe_exit(name)}", file=sys.stderr)
                print("stopping the rest of the stack", file=sys.stderr)
                return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0


def _print_urls(stack: Stack) -> None:
    urls = stack.urls
    print(
        "\nperfcycle is up:\n"
        f"  Prefect UI   {urls['prefect_ui']}   (HR: Deployments > review-cycle > launch)\n"
        f"  portal       {urls['portal']}\n"
        f"  mail sink    {urls['smtp']} -> {stack.mail_dir}\n"
        f"               (perfcycle mail-sink --list --dir {stack.mail_dir})\n"
        f"  database     {stack.database_url}\n"
        f"  logs         {stack.logs_dir}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )


def _print(message: str) -> None:
    print(message, flush=True)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def home_secret_key(home: Path) -> str:
    """The session key of a local stack: the environment's when it is strong, else a random one
    made once per home and kept in <home>/secret_key (readable by its owner only), so sessions
    survive a restart and no stack signs with the public default."""
    from perfcycle.core.settings import Settings, weak_secret_key

    configured = Settings().secret_key
    if weak_secret_key(configured) is None:
        return configured
    path = home / "secret_key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of the same home made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
