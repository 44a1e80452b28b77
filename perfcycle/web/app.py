"""The portal app: the routers in routes.ROUTERS (home, sign-in, task pages), /healthz.

Run with `perfcycle portal [--workers N]` (perfcycle/web/serve.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perfcycle.core.errors import InvalidInput, NotAllowed
from perfcycle.web import deps, i18n
from perfcycle.web.routes import ROUTERS

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Links carry tokens in their path: no Referer may take them to another site. Pages need no
# script; styles come from our own file (and inline SVG charts may carry style attributes).
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'none'; "
        b"style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]


def create_app(database_url: str | None = None) -> FastAPI:
    """`database_url` defaults to the settings' (PERFCYCLE_DATABASE_URL or PERFCYCLE_HOME)."""
    app = FastAPI(title="perfcycle portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.database_url = database_url
    app.add_middleware(SecurityHeaders)
    # Outermost: admit only as many requests as the database pool can serve (see AdmissionLimit).
    app.add_middleware(AdmissionLimit, limit=MAX_CONCURRENT_REQUESTS)
    _add_error_pages(app)
    app.mount(deps.STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


# Below the SQLAlchemy pool (5 + 10 overflow) so a request admitted always gets a connection.
MAX_CONCURRENT_REQUESTS = 10


class AdmissionLimit:
    """Queue requests beyond `limit` before they touch the database.

    Without it a burst deadlocks: each request's dependencies take a pooled connection in a
    worker thread, then wait for another thread to run the page, while every thread waits for
    a connection (measured: 200 simultaneous raters, 0 saved, all timing out after 30 s).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._gate: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._gate is None:  # created inside the server's event loop
            self._gate = asyncio.Semaphore(self.limit)
        async with self._gate:
            await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (plain ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


_STATUS_TITLES = {
    400: "bad_request",
    401: "sign_in_required",
    403: "forbidden",
    404: "not_found",
    422: "invalid_input",
    429: "too_many_requests",
}


def _add_error_pages(app: FastAPI) -> None:
    """Every refusal is a page in the layout, never FastAPI's JSON."""

    @app.exception_handler(deps.PageError)
    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, deps.PageError)
        return deps.page_error_response(request, exc)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NotAllowed):
            return deps.error_page(request, 403, "forbidden", str(exc))
        return deps.error_page(request, 422, "invalid_input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return deps.error_page(request, 422, "bad_request", where)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The request's transaction rolled back: say so, rather than Starlette's bare text.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        message = i18n.translate("server_error_text", deps.locale_of(request))
        return deps.error_page(request, 500, "server_error", message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = _STATUS_TITLES.get(exc.status_code, "bad_request")
        detail = exc.detail if isinstance(exc.detail, str) else ""
        response = deps.error_page(request, exc.status_code, title, detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response


app = create_app()
