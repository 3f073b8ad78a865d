"""Periodic background tasks for services: loops that always stop, since a stop flag ends
them even if a client library swallows the task's cancellation (seen with redis-py under load:
``close()`` then waited forever). Moved here from the limiter so every service uses one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` every ``interval_s`` seconds until ``stop()``; errors are logged."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._interval = interval_s
        self._step = step
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval)
            if self._stopping:
                break
            try:
                await self._step()
            except Exception:
                log.exception("background step %s failed", self.name)

    async def stop(self, timeout_s: float = 2.0) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is None:
            return
        await stop_task(task, timeout_s)


async def stop_task(task: asyncio.Task[None], timeout_s: float = 2.0) -> None:
    """Cancel ``task`` and wait for it at most ``timeout_s`` (never hangs the caller)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("task %s did not stop within %.1fs", task.get_name(), timeout_s)
        return
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())
