"""Shared fixtures: one registry of backend factories, for the conformance suite.

A new backend is one ``@backend_factory("name")`` entry here: every test that
takes the ``kit`` fixture then runs on it too.
"""

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

# name -> async factory(kit, clock=..., queue=..., **options) -> Backend
Factory = Callable[..., Awaitable[Backend]]
FACTORIES: dict[str, Factory] = {}


def backend_factory(name: str) -> Callable[[Factory], Factory]:
    def register(factory: Factory) -> Factory:
        FACTORIES[name] = factory
        return factory

    return register


@dataclass
class BackendKit:
    """Makes fresh backends of one kind; closes them after the test."""

    name: str
    folder: Path
    created: list[Backend] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def serial(self) -> int:
        return next(self._serial)

    async def make(
        self, *, clock: Clock | None = None, queue: str = "default", **options: Any
    ) -> Backend:
        backend = await FACTORIES[self.name](
            self, clock=clock or system_clock, queue=queue, **options
        )
        self.created.append(backend)
        return backend

    async def close(self) -> None:
        for backend in self.created:
            await backend.close()
        for cleanup in reversed(self.cleanups):
            await cleanup()


@backend_factory("memory")
async def _memory(kit: BackendKit, *, clock: Clock, queue: str, **options: Any) -> Backend:
    return MemoryBackend(queue=queue, clock=clock, **FAST_POLL, **options)


@backend_factory("sqlite")
async def _sqlite(kit: BackendKit, *, clock: Clock, queue: str, **options: Any) -> Backend:
    from rxqueue.backends.sqlite import SqliteBackend

    path = kit.folder / f"tasks-{kit.serial()}.db"
    return SqliteBackend(path, queue=queue, clock=clock, **FAST_POLL, **options)


@backend_factory("custom")
async def _custom(kit: BackendKit, *, clock: Clock, queue: str, **options: Any) -> Backend:
    from examples.custom_sqlite_backend import Config, open_backend

    path = kit.folder / f"custom-{kit.serial()}.db"
    backend = await open_backend(path, Config(batch_size=10, poll_interval=0.002), queue=queue)
    backend.clock = clock
    kit.cleanups.append(backend.db.close)
    return backend


_UNREACHABLE: dict[str, str] = {}


async def reachable_postgres() -> str:
    """The test server's URL (``RXQUEUE_POSTGRES_URL``, default the local test database).

    Checked once per session: if it cannot be reached the test is skipped, with the
    reason, except under ``CI=true``, where a missing server is a failure.
    """
    import os

    url = os.environ.get("RXQUEUE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if url not in _UNREACHABLE:
        try:
            import asyncpg

            conn = await asyncpg.connect(url, timeout=5)
            await conn.close()
            _UNREACHABLE[url] = ""
        except Exception as exc:
            _UNREACHABLE[url] = f"{type(exc).__name__}: {exc}"
    if _UNREACHABLE[url]:
        reason = f"PostgreSQL not reachable at {url}: {_UNREACHABLE[url]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@backend_factory("postgres")
async def _postgres(kit: BackendKit, *, clock: Clock, queue: str, **options: Any) -> Backend:
    """A PostgresBackend in a schema of its own (``t_<hex>``), dropped after the test.

    The server (``RXQUEUE_POSTGRES_URL``, default the local test database) is
    checked once per session: unreachable, the test is skipped, or fails under CI.
    """
    import uuid

    url = await reachable_postgres()
    import asyncpg

    from rxqueue.backends.postgres import PostgresBackend

    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def drop_schema() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    kit.cleanups.append(drop_schema)
    options = {**FAST_POLL, "pool_max_size": 4, **options}
    return PostgresBackend(url, schema=schema, queue=queue, clock=clock, **options)


@pytest.fixture(params=list(FACTORIES))
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
