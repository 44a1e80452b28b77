"""`perfcycle portal`: serve the portal with uvicorn, one or more worker processes.

Use this rather than `uvicorn --workers N`. For N > 1 uvicorn binds the listening socket itself
without naming TCP as its protocol; connections accepted on it inherit that, asyncio then leaves
Nagle's algorithm on, and every keep-alive request after the first waits ~40 ms for the
browser's delayed ACK (uvicorn issue #3149, open as of uvicorn 0.54). Here the socket says TCP.
Everything else is uvicorn's own.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from perfcycle.core.settings import MIN_SECRET_KEY_LENGTH, get_settings, weak_secret_key

APP = "perfcycle.web.app:app"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class UnsafeSecretKey(Exception):
    """The portal would serve other hosts with a session key anyone can know."""


def check_secret_key(host: str) -> None:
    """Anyone holding the signing key signs a cookie in as anyone: a portal that other hosts
    can reach refuses to start with a public, placeholder or short key."""
    reason = weak_secret_key(get_settings().secret_key)
    if reason and host not in LOOPBACK:
        raise UnsafeSecretKey(
            f"refusing to serve the portal on {host}: PERFCYCLE_SECRET_KEY {reason}. Set it to "
            f"a random string of at least {MIN_SECRET_KEY_LENGTH} characters (e.g. the output "
            "of `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`), or serve on "
            "127.0.0.1 only."
        )


class PortalConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
            # Same descriptor, now labelled TCP, so each accepted connection gets TCP_NODELAY.
            return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
        return sock


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    workers: int = 1,
    proxy_headers: bool = False,
    forwarded_allow_ips: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
    app: str = APP,
) -> None:
    check_secret_key(host)
    config = PortalConfig(
        app,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
        access_log=access_log,
    )
    if workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()


def _run(args: argparse.Namespace) -> int:
    try:
        serve(
            host=args.host,
            port=args.port,
            workers=args.workers,
            proxy_headers=args.proxy_headers,
            forwarded_allow_ips=args.forwarded_allow_ips,
            log_level=args.log_level,
            access_log=not args.no_access_log,
            app=args.app,
        )
    except UnsafeSecretKey as exc:
        print(f"perfcycle portal: {exc}", file=sys.stderr)
        return 2
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add `portal` to perfcycle's argparse subparsers."""
    text = "serve the portal (the pages people reach from their task emails)"
    p = subparsers.add_parser("portal", help=text, description=text)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument(
        "--workers", type=_positive, default=1, help="worker processes (about one per core)"
    )
    p.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-* from --forwarded-allow-ips (behind a TLS reverse proxy)",
    )
    p.add_argument("--forwarded-allow-ips", default=None, help="e.g. '*' or '10.0.0.1'")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument("--no-access-log", action="store_true", help="don't log each request")
    p.add_argument("--app", default=APP, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
