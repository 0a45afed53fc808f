"""Shared fixtures: one backend factory per backend, for the conformance suite."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rxqueue import Backend, Capability, Clock, MemoryBackend
from rxqueue.clock import system_clock

FAST_POLL = {"poll_interval": 0.002, "max_poll_interval": 0.01}
BACKENDS = ["memory", "sqlite", "custom"]


@dataclass
class BackendKit:
    """Makes fresh backends of one kind; closes them after the test."""

    name: str
    folder: Path
    created: list[Backend] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    async def make(
        self, *, clock: Clock | None = None, queue: str = "default", **options: Any
    ) -> Backend:
        clock = clock or system_clock
        if self.name == "memory":
            backend: Backend = MemoryBackend(queue=queue, clock=clock, **FAST_POLL, **options)
        elif self.name == "sqlite":
            from rxqueue.backends.sqlite import SqliteBackend

            path = self.folder / f"tasks-{next(self._serial)}.db"
            backend = SqliteBackend(path, queue=queue, clock=clock, **FAST_POLL, **options)
        else:
            from examples.custom_sqlite_backend import Config, open_backend

            path = self.folder / f"custom-{next(self._serial)}.db"
            backend = await open_backend(path, Config(batch_size=10, poll_interval=0.002))
        self.created.append(backend)
        return backend

    async def close(self) -> None:
        for backend in self.created:
            await backend.close()
            db = getattr(backend, "db", None)
            if db is not None:
                await db.close()


@pytest.fixture(params=BACKENDS)
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BackendKit]:
    made = BackendKit(request.param, tmp_path)
    yield made
    await made.close()


def require(backend: Backend, *capabilities: Capability) -> None:
    """Skip (with the reason) when the backend does not declare a capability."""
    missing = [c.value for c in capabilities if c not in backend.capabilities]
    if missing:
        pytest.skip(f"{type(backend).__name__} does not declare {', '.join(missing)}")


Maker = Callable[..., Awaitable[Backend]]
