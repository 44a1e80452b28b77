"""`perfcycle portal`: uvicorn with several workers, and no Nagle delay on keep-alive requests."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfcycle.cli.main import main
from perfcycle.core.settings import get_settings, weak_secret_key
from perfcycle.devtools.devstack import Stack, pick_free_ports
from perfcycle.web.serve import APP, PortalConfig, check_secret_key

STARTUP_S = 30.0


async def accepted_connection_options(listener: socket.socket) -> tuple[int, int]:
    """(proto, TCP_NODELAY) of a connection accepted on `listener`, as in a uvicorn worker."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[tuple[int, int]] = loop.create_future()

    class Report(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.set_result((sock.proto, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            transport.close()

    server = await loop.create_server(Report, sock=listener)
    try:
        host, port = listener.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        result = await asyncio.wait_for(seen, 5)
        writer.close()
        return result
    finally:
        server.close()


def test_the_shared_listening_socket_gives_each_connection_tcp_nodelay() -> None:
    [port] = pick_free_ports(1)
    listener = PortalConfig(APP, host="127.0.0.1", port=port, workers=2).bind_socket()
    try:
        proto, nodelay = asyncio.run(accepted_connection_options(listener))
    finally:
        listener.close()

    assert proto == socket.IPPROTO_TCP
    assert nodelay != 0, "Nagle's algorithm is on: keep-alive requests would wait ~40 ms"


def test_perfcycle_portal_serves_with_two_workers_and_stops_on_sigterm(db_url: str) -> None:
    [port] = pick_free_ports(1)
    env = {**os.environ, "PERFCYCLE_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "perfcycle.cli.main", "portal", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", "2", "--no-access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        connection = wait_until_serving(server, port)
        statuses = []
        for _ in range(3):  # one keep-alive connection, as a browser uses it
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
        assert statuses == [200, 200, 200]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()

    assert server.returncode == 0, output
    assert output.count("Started server process") == 2, output


def wait_until_serving(server: subprocess.Popen[bytes], port: int) -> http.client.HTTPConnection:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"perfcycle portal exited with {server.returncode}"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.connect()
            return connection
        except OSError:
            connection.close()
            time.sleep(0.1)
    raise AssertionError(f"perfcycle portal did not listen on {port} within {STARTUP_S:.0f} s")


def test_perfcycle_portal_refuses_zero_workers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "perfcycle.cli.main", "portal", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert out.returncode == 2
    assert "--workers: must be at least 1, got 0" in out.stderr


@pytest.mark.parametrize(
    "key", ["dev-only-change-me", "CHANGE-ME-to-a-long-random-string", "short-but-not-default"]
)
def test_the_portal_refuses_other_hosts_with_a_public_or_short_key(
    key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERFCYCLE_SECRET_KEY", key)
    get_settings.cache_clear()
    try:
        assert main(["portal", "--host", "0.0.0.0", "--port", "1"]) == 2
        assert "refusing to serve the portal on 0.0.0.0: PERFCYCLE_SECRET_KEY" in (
            capsys.readouterr().err
        )
        check_secret_key("127.0.0.1")  # loopback only: the developer's own machine
        monkeypatch.setenv("PERFCYCLE_SECRET_KEY", "k" * 40)
        get_settings.cache_clear()
        check_secret_key("0.0.0.0")
    finally:
        get_settings.cache_clear()


def test_each_local_stack_home_keeps_a_random_key_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERFCYCLE_SECRET_KEY", raising=False)
    first = Stack(home=tmp_path / "a").env["PERFCYCLE_SECRET_KEY"]
    assert weak_secret_key(first) is None
    assert Stack(home=tmp_path / "a").env["PERFCYCLE_SECRET_KEY"] == first  # kept across starts
    assert Stack(home=tmp_path / "b").env["PERFCYCLE_SECRET_KEY"] != first
    assert (tmp_path / "a" / "secret_key").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("PERFCYCLE_SECRET_KEY", "s" * 48)  # a configured strong key is used
    assert Stack(home=tmp_path / "c").env["PERFCYCLE_SECRET_KEY"] == "s" * 48
