"""Render processes: rendering and building MIME is most of the relay's CPU time, so big batches
render in other processes while the relay sends."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor

from perfcycle.core.settings import Settings

# Below this many rows a batch renders in-process: starting render processes costs ~1 s.
RENDER_POOL_MIN_ROWS = 100


def render_processes(settings: Settings) -> int:
    """How many processes render while the relay sends: by default one per CPU beyond the first
    (rendering and building MIME is most of the relay's CPU time); 0 renders in-process."""
    configured = settings.mail_render_processes
    if configured is not None:
        return max(0, int(configured))
    return min(2, (os.cpu_count() or 1) - 1)


def start_renderer(processes: int) -> Executor:
    # spawn, not fork: the relay runs inside Prefect's threaded runner, and forking a process
    # with threads can copy a held lock into the child.
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))


class RenderPool:
    """Render processes, started by the first batch big enough to repay their start-up."""

    def __init__(self, processes: int, min_rows: int = RENDER_POOL_MIN_ROWS):
        self.processes = processes
        self.min_rows = min_rows
        self._executor: Executor | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    def for_batch(self, rows: int) -> Executor | None:
        if self._executor is None and (self.processes <= 0 or rows < self.min_rows):
            return None
        if self._executor is None:
            self._executor = start_renderer(self.processes)
        return self._executor

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
