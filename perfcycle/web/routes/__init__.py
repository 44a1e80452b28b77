"""The portal's page modules: each exposes `router = APIRouter()`; app.py includes ROUTERS in order.

A new page module (interview, improvement plan, appeal, calibration) is imported here and its
router added to ROUTERS; tests/web checks that every module in this folder is.
"""

from __future__ import annotations

from fastapi import APIRouter

from perfcycle.web.routes import audit, auth, evaluations, goals, home, hr, me

ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    goals.router,
    evaluations.router,
    me.router,
    hr.router,
    audit.router,
    home.router,
)
