"""Prometheus metrics for workers: ``rxqueue.metrics.prometheus(worker_or_monitor)``.

Needs the ``metrics`` extra (``pip install 'rxqueue[metrics]'``, prometheus-client);
it is imported only when :func:`prometheus` is called.

What is exported, labelled by ``queue`` and ``worker``:

- counters ``rxqueue_tasks_{started,succeeded,failed,retried,killed,cancelled}_total``,
  counted from ``worker.events`` as each attempt ends (``started`` = attempts that
  ran to success or failure; ``failed`` counts every failed attempt, each then
  ``retried`` or ``killed``);
- histograms ``rxqueue_task_duration_seconds`` (handler time of successful attempts,
  ``finished_at - started_at``) and ``rxqueue_task_queue_wait_seconds`` (from when
  the task became runnable to when its successful attempt started);
- gauges ``rxqueue_tasks_in_flight`` and ``rxqueue_tasks_buffered``, read from
  :meth:`Worker.statistics` at scrape time;
- gauge ``rxqueue_queue_depth{queue, status}``: ``await backend.stats()`` per queue.

Collectors are synchronous and scrapes come from another thread, so queue depth is
not read from the store during a scrape: an asyncio task polls it every
``interval`` seconds on the event loop the metrics were made in (or, made outside
a loop, the loop of the first worker that starts), and a scrape returns the latest
figures. ``await metrics.refresh()`` polls at once. ``metrics.close()`` stops the
poller, the event subscriptions, and unregisters the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self

from rxqueue.backends.base import Backend, Capability
from rxqueue.task import Status
from rxqueue.worker import events as ev
from rxqueue.worker.monitor import Monitor
from rxqueue.worker.worker import Worker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["PrometheusMetrics", "prometheus"]

_OUTCOMES = ("started", "succeeded", "failed", "retried", "killed", "cancelled")
_LABELS = ("queue", "worker")


def _client() -> types.ModuleType:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "rxqueue.metrics needs prometheus-client: pip install 'rxqueue[metrics]'"
        ) from None
    return prometheus_client


def prometheus(
    source: Worker | Monitor,
    registry: CollectorRegistry | None = None,
    *,
    interval: float = 5.0,
) -> PrometheusMetrics:
    """Export ``source``'s metrics (a worker, or every worker registered on a monitor
    so far) to ``registry`` (prometheus-client's default registry when None).

    Serve them with ``prometheus_client.start_http_server(port, registry=...)``.
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    return PrometheusMetrics(source, registry, interval)


class PrometheusMetrics:
    """The handle :func:`prometheus` returns; ``close()`` (or ``with``) undoes it."""

    def __init__(
        self, source: Worker | Monitor, registry: CollectorRegistry | None, interval: float
    ) -> None:
        if isinstance(source, Monitor):
            self.workers: list[Worker] = list(source._workers)
        elif isinstance(source, Worker):
            self.workers = [source]
        else:
            raise TypeError(f"expected a Worker or a Monitor, got {type(source).__name__}")
        client = _client()
        self.interval = interval
        self.registry = client.REGISTRY if registry is None else registry
        self._counters = {
            name: client.Counter(
                f"rxqueue_tasks_{name}", f"Task attempts {name}", _LABELS, registry=None
            )
            for name in _OUTCOMES
        }
        self._duration = client.Histogram(
            "rxqueue_task_duration_seconds",
            "Handler time of successful attempts (finished_at - started_at)",
            _LABELS,
            registry=None,
        )
        self._wait = client.Histogram(
            "rxqueue_task_queue_wait_seconds",
            "From when a task became runnable to when its successful attempt started",
            _LABELS,
            registry=None,
        )
        self._gauge_family = client.metrics_core.GaugeMetricFamily
        # One store per queue: the first worker's backend polls that queue's depth.
        self._backends: dict[str, Backend] = {}
        for worker in self.workers:
            queue = worker.backend.queue
            for metric in (*self._counters.values(), self._duration, self._wait):
                metric.labels(queue, worker.name)  # export zeros before the first event
            if Capability.LIST in worker.backend.capabilities:
                self._backends.setdefault(queue, worker.backend)
        self._depth: dict[str, dict[Status, int]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False
        self._subscriptions = [
            worker.events.subscribe(on_next=self._observer(worker)) for worker in self.workers
        ]
        self.registry.register(self)
        with contextlib.suppress(RuntimeError):  # no running loop: the first Started does it
            self._start_poller(asyncio.get_running_loop())

    # --- events ---------------------------------------------------------------------

    def _observer(self, worker: Worker) -> Any:
        labels = (worker.backend.queue, worker.name)
        counters = {name: counter.labels(*labels) for name, counter in self._counters.items()}
        duration, wait = self._duration.labels(*labels), self._wait.labels(*labels)

        def on_next(event: ev.Event) -> None:
            if isinstance(event, ev.Succeeded):
                counters["started"].inc()
                counters["succeeded"].inc()
                duration.observe(max(0.0, event.finished_at - event.started_at))
                wait.observe(max(0.0, event.started_at - event.enqueued_at))
            elif isinstance(event, ev.Failed):
                counters["started"].inc()
                counters["failed"].inc()
            elif isinstance(event, ev.Retrying):
                counters["retried"].inc()
            elif isinstance(event, ev.Killed):
                counters["killed"].inc()
            elif isinstance(event, ev.Cancelled):
                counters["cancelled"].inc()
            elif isinstance(event, ev.Started) and self._poller is None and not self._closed:
                self._start_poller(asyncio.get_running_loop())

        return on_next

    # --- queue depth ----------------------------------------------------------------

    def _start_poller(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._backends:
            self._poller = loop.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            # A store that fails now keeps its last figures; the next poll tries again.
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self.interval)

    async def refresh(self) -> None:
        """Read every queue's depth from its store now."""
        for queue, backend in self._backends.items():
            self._depth[queue] = dict(await backend.stats())

    # --- the collector prometheus-client calls at scrape time ----------------------

    def collect(self) -> Iterator[Metric]:
        for metric in (*self._counters.values(), self._duration, self._wait):
            yield from metric.collect()
        in_flight = self._gauge_family(
            "rxqueue_tasks_in_flight", "Attempts running now", labels=_LABELS
        )
        buffered = self._gauge_family(
            "rxqueue_tasks_buffered", "Tasks claimed, waiting in the worker", labels=_LABELS
        )
        for worker in self.workers:
            stats = worker.statistics()
            labels = [worker.backend.queue, worker.name]
            in_flight.add_metric(labels, stats.in_flight)
            buffered.add_metric(labels, stats.buffered)
        yield in_flight
        yield buffered
        depth = self._gauge_family(
            "rxqueue_queue_depth",
            f"Tasks in the store by status, polled every {self.interval:g}s",
            labels=("queue", "status"),
        )
        for queue, counts in list(self._depth.items()):
            for status, count in counts.items():
                depth.add_metric([queue, status.value], count)
        yield depth

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Stop polling and observing, and unregister from the registry (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
        for subscription in self._subscriptions:
            subscription.dispose()
        self.registry.unregister(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
