"""Backends, chosen by URL: ``rxqueue.connect("sqlite:///tasks.db", queue="emails")``."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from rxqueue.backends.base import Backend, Capability
from rxqueue.errors import BackendError

__all__ = ["Backend", "Capability", "connect"]

_SCHEMES = {
    "memory": ("rxqueue.backends.memory", "MemoryBackend", None),
    "sqlite": ("rxqueue.backends.sqlite", "SqliteBackend", None),
    "postgres": ("rxqueue.backends.postgres", "PostgresBackend", "postgres"),
    "postgresql": ("rxqueue.backends.postgres", "PostgresBackend", "postgres"),
    "redis": ("rxqueue.backends.redis", "RedisBackend", "redis"),
}


def connect(url: str, **options: Any) -> Backend:
    """Open the backend a URL names; ``options`` go to its constructor.

    ``memory://`` (a fresh in-process store), ``sqlite:///relative.db`` or
    ``sqlite:////absolute/path.db``. Connections open lazily, on first use.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        raise BackendError(f"unknown backend URL {url!r}; rxqueue knows {known}")
    module_name, class_name, extra = _SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BackendError(f"the {scheme}:// backend is not part of this rxqueue yet") from exc
        hint = f"pip install 'rxqueue[{extra}]'" if extra else "reinstall rxqueue"
        raise BackendError(
            f"the {scheme}:// backend needs {exc.name}, which is not installed; {hint}"
        ) from exc
    backend_class = getattr(module, class_name)
    if scheme == "memory":
        return backend_class(**options)  # type: ignore[no-any-return]
    return backend_class.from_url(url, **options)  # type: ignore[no-any-return]
