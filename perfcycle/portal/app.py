"""Placeholder portal: a home page listing the cycles, and a health check for the dev stack.

The real pages (tasks, evaluation forms, calibration, appeals) arrive with the portal issue.
Run with: uvicorn perfcycle.portal.app:app
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from perfcycle.db import get_engine
from perfcycle.models import Cycle
from perfcycle.settings import get_settings

_HOME = Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>perfcycle portal · 绩效考核门户</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .3rem .6rem; }
.note { color: #555; }
</style>
</head>
<body>
<h1>perfcycle portal · 绩效考核门户</h1>
<p class="note">门户页面（任务、评价表、校准、申诉）将随门户议题上线。
<span lang="en">The portal pages (tasks, evaluation forms, calibration, appeals) arrive with the
portal issue.</span></p>
<p>Prefect UI（发起考核周期、审批校准 · launch cycles, approve calibration）:
<a href="{{ prefect_ui_url }}">{{ prefect_ui_url }}</a></p>
<h2>考核周期 · Cycles</h2>
{% if error %}
<p class="error">数据库不可用 · The database is not reachable: {{ error }}</p>
{% elif not cycles %}
<p>还没有考核周期 · No cycles yet.</p>
{% else %}
<table>
<tr><th>id</th><th>policy</th><th>period</th><th>state</th></tr>
{% for c in cycles %}
<tr><td>{{ c.id }}</td><td>{{ c.policy }}</td><td>{{ c.period }}</td><td>{{ c.state }}</td></tr>
{% endfor %}
</table>
{% endif %}
</body>
</html>
"""
)


@dataclass(frozen=True)
class CycleRow:
    id: int
    policy: str
    period: str
    state: str


def list_cycles(database_url: str | None = None) -> list[CycleRow]:
    """Newest first. Raises SQLAlchemyError when the database or its tables are missing."""
    columns = select(Cycle.id, Cycle.policy, Cycle.period, Cycle.state).order_by(Cycle.id.desc())
    with get_engine(database_url).connect() as conn:
        return [CycleRow(*row) for row in conn.execute(columns)]


def render_home(database_url: str | None = None) -> str:
    cycles: list[CycleRow] = []
    error = ""
    try:
        cycles = list_cycles(database_url)
    except SQLAlchemyError as exc:
        # The first line names the cause (no such table, connection refused) without the SQL.
        error = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return _HOME.render(cycles=cycles, error=error, prefect_ui_url=get_settings().prefect_ui_url)


def create_app(database_url: str | None = None) -> FastAPI:
    """`database_url` defaults to the settings' (PERFCYCLE_DATABASE_URL or PERFCYCLE_HOME)."""
    app = FastAPI(title="perfcycle portal", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return render_home(database_url)

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


app = create_app()
