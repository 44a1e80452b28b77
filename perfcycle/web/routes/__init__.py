"""The portal's page modules: each exposes `router = APIRouter()`; app.py includes ROUTERS in order.

A new page module (interview, improvement plan, appeal, calibration) is added here by name.
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter

ROUTERS: tuple[str, ...] = ("auth", "goals", "evaluations", "me", "hr", "audit", "home")


def load_routers() -> list[APIRouter]:
    return [importlib.import_module(f"{__name__}.{name}").router for name in ROUTERS]
