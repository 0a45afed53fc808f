"""``WorkerBuilder("name").backend(b).concurrency(8).layer(...).build(handler)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from reactivex import Observable

from rxqueue.backends.base import Backend
from rxqueue.errors import BuildError
from rxqueue.worker.events import Event
from rxqueue.worker.handler import inspect_handler
from rxqueue.worker.layers import Layer
from rxqueue.worker.worker import Worker, WorkerSettings

DEFAULT_PREFETCH_CAP = 256  # adaptive claims grow no further than this by default


async def _routed(payload: Any) -> None:
    """Stands in for the handler of a worker whose tasks a router runs."""


class WorkerBuilder:
    """Collects a worker's parts; :meth:`build` checks them and makes the :class:`Worker`."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise BuildError("a worker needs a non-empty name: WorkerBuilder('email-worker')")
        self._name = name
        self._backend: Backend | None = None
        self._concurrency = 1
        self._prefetch: int | None = None
        self._layers: list[Layer] = []
        self._data: dict[type, Any] = {}
        self._listeners: list[Callable[[Event], Any]] = []
        self._shutdown_timeout = 30.0
        self._heartbeat_interval: float | None = None
        self._ack_batch = 256
        self._ack_interval = 0.005
        self._idle_horizon = 60.0
        self._sources: list[Observable[Any]] = []

    def backend(self, backend: Backend) -> Self:
        if not isinstance(backend, Backend):
            raise BuildError(
                f"backend() takes an rxqueue Backend, got {type(backend).__name__}; "
                "build one with BackendBuilder or rxqueue.connect(url)"
            )
        self._backend = backend
        return self

    def concurrency(self, n: int) -> Self:
        """How many handlers run at once (consumer coroutines)."""
        self._concurrency = _count("concurrency", n)
        return self

    def prefetch(self, n: int) -> Self:
        """The most claimed-but-unstarted tasks held, and the size of every claim.

        By default claims adapt: they start at concurrency x batch size and double
        while fast handlers drain them, up to 16 times that, at most
        :data:`DEFAULT_PREFETCH_CAP` (256) unless the start is larger already.
        """
        self._prefetch = _count("prefetch", n)
        return self

    def layer(self, layer: Layer) -> Self:
        """Wrap the handler; the first layer added is the outermost."""
        if not callable(layer):
            raise BuildError(f"a layer must be callable, got {type(layer).__name__}")
        self._layers.append(layer)
        return self

    def data(self, obj: Any) -> Self:
        """Share ``obj`` with handlers: ``ctx.data(type(obj))``."""
        self._data[type(obj)] = obj
        return self

    def on_event(self, callback: Callable[[Event], Any]) -> Self:
        """Call ``callback(event)`` for every worker event."""
        self._listeners.append(callback)
        return self

    def shutdown_timeout(self, seconds: float) -> Self:
        """How long a stop waits for running handlers before cancelling them."""
        self._shutdown_timeout = _non_negative("shutdown_timeout", seconds)
        return self

    def heartbeat_interval(self, seconds: float) -> Self:
        self._heartbeat_interval = _positive("heartbeat_interval", seconds)
        return self

    def ack_batch(self, size: int, interval: float = 0.005) -> Self:
        """Flush outcomes to the store every ``size`` tasks or ``interval`` seconds."""
        self._ack_batch = _count("ack_batch size", size)
        self._ack_interval = _positive("ack_batch interval", interval)
        return self

    def idle_horizon(self, seconds: float) -> Self:
        """``run_until_idle`` waits for tasks due within this many seconds."""
        self._idle_horizon = _non_negative("idle_horizon", seconds)
        return self

    def cron(self, source: Observable[Any]) -> Self:
        """Run ``source`` (``rxqueue.sources.cron(...)``/``every(...)``, or any Observable
        of tasks or payloads) beside the worker: each run subscribes it to the
        backend's sink when it starts and disposes it when it stops."""
        if not isinstance(source, Observable):
            raise BuildError(
                f"cron() takes an Observable such as rxqueue.sources.cron(...), "
                f"got {type(source).__name__}"
            )
        self._sources.append(source)
        return self

    def build(self, handler: Callable[..., Any]) -> Worker:
        if self._backend is None:
            raise BuildError(
                f"worker {self._name!r} has no backend; add .backend(b) before .build(handler)"
            )
        backend = self._backend
        # Workflows (rxqueue.workflow) bring their own innermost call: a router to steps.
        routes = getattr(handler, "__rxqueue_invoke__", None)
        invoke = None if routes is None else routes(backend.codec, backend.clock)
        spec = inspect_handler(_routed if invoke else handler, backend.codec)
        base = self._concurrency * backend.batch_size_hint
        window: int | None = None
        if self._prefetch is not None:
            prefetch = self._prefetch
        else:
            window = base
            prefetch = max(base, min(DEFAULT_PREFETCH_CAP, 16 * base))
        heartbeat = float(
            self._heartbeat_interval or getattr(backend, "heartbeat_interval", None) or 10.0
        )
        settings = WorkerSettings(
            concurrency=self._concurrency,
            prefetch=prefetch,
            window=window,
            shutdown_timeout=self._shutdown_timeout,
            heartbeat_interval=heartbeat,
            ack_batch=self._ack_batch,
            ack_interval=self._ack_interval,
            idle_horizon=self._idle_horizon,
        )
        worker = Worker(
            self._name,
            backend,
            spec,
            settings,
            layers=tuple(self._layers),
            data=self._data,
            sources=tuple(self._sources),
            invoke=invoke,
        )
        for listener in self._listeners:
            worker.events.subscribe(on_next=listener)
        return worker


def _positive(what: str, value: float) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise BuildError(f"{what} must be a positive number, got {value!r}")
    return value


def _count(what: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BuildError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


def _non_negative(what: str, value: float) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise BuildError(f"{what} must be >= 0, got {value!r}")
    return value
