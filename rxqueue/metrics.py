"""Prometheus metrics for workers: ``rxqueue.metrics.prometheus(worker_or_monitor)``.

Needs the ``metrics`` extra (``pip install 'rxqueue[metrics]'``, prometheus-client);
it is imported only when :func:`prometheus` is called.

What is exported, labelled by ``queue`` and ``worker``:

- counters ``rxqueue_tasks_{started,succeeded,failed,retried,killed,cancelled}_total``,
  counted through :meth:`Worker.on_outcome` as each attempt ends (``started`` =
  attempts that ran to success or failure; ``failed`` counts every failed attempt,
  each then ``retried`` or ``killed``);
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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self

from rxqueue.backends.base import Backend, Capability
from rxqueue.task import Cancelled, Done, Outcome, Retry, Status, Task
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
        self._families = client.metrics_core
        self._buckets = tuple(client.Histogram.DEFAULT_BUCKETS[:-1])  # +Inf is implicit
        self._gauge_family = client.metrics_core.GaugeMetricFamily
        # One store per queue: the first worker's backend polls that queue's depth.
        self._backends: dict[str, Backend] = {}
        for worker in self.workers:
            queue = worker.backend.queue
            if Capability.LIST in worker.backend.capabilities:
                self._backends.setdefault(queue, worker.backend)
        self._depth: dict[str, dict[Status, int]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False
        # Counted with plain arithmetic on the worker's loop: prometheus-client's own
        # metrics take a lock per call and events build an object per step, which
        # cost 40% of no-op throughput on the memory backend.
        self._tallies = [(worker, _Tally(self._buckets)) for worker in self.workers]
        self._removals = [self._count_first(worker, tally) for worker, tally in self._tallies]
        self.registry.register(self)
        with contextlib.suppress(RuntimeError):  # no running loop: the first Started does it
            self._start_poller(asyncio.get_running_loop())

    # --- events ---------------------------------------------------------------------

    def _count_first(self, worker: Worker, tally: _Tally) -> Callable[[], None]:
        """Count ``worker``'s outcomes into ``tally``; the first one also starts the
        depth poller on the loop the worker runs in, then the tally counts alone."""
        removals: list[Callable[[], None]] = []

        def first(task: Task[Any], outcome: Outcome, started: float, finished: float) -> None:
            removals.pop()()
            removals.append(worker.on_outcome(tally))
            if self._poller is None and not self._closed:
                self._start_poller(asyncio.get_running_loop())
            tally(task, outcome, started, finished)

        removals.append(worker.on_outcome(first))
        return lambda: removals.pop()()

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
        families = self._families
        counters = {
            name: families.CounterMetricFamily(
                f"rxqueue_tasks_{name}", f"Task attempts {name}", labels=_LABELS
            )
            for name in _OUTCOMES
        }
        duration = families.HistogramMetricFamily(
            "rxqueue_task_duration_seconds",
            "Handler time of successful attempts (finished_at - started_at)",
            labels=_LABELS,
        )
        wait = families.HistogramMetricFamily(
            "rxqueue_task_queue_wait_seconds",
            "From when a task became runnable to when its successful attempt started",
            labels=_LABELS,
        )
        for worker, tally in self._tallies:
            labels = [worker.backend.queue, worker.name]
            counted = dict(tally.counts)  # a snapshot: the loop thread keeps counting
            for name, family in counters.items():
                family.add_metric(labels, counted[name])
            for family, histogram in ((duration, tally.duration), (wait, tally.wait)):
                buckets, total = histogram.snapshot(self._buckets)
                family.add_metric(labels, buckets=buckets, sum_value=total)
        yield from counters.values()
        yield duration
        yield wait
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
        for remove in self._removals:
            remove()
        self.registry.unregister(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Histogram:
    """Bucket counts and a sum, as a Prometheus histogram keeps them, without a lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def snapshot(self, bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, and the sum."""
        counts, total = list(self.counts), self.total
        cumulative, running = [], 0
        for bound, count in zip((*map(repr, bounds), "+Inf"), counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative, total


class _Tally:
    """One worker's outcome counts and histograms, updated by :meth:`Worker.on_outcome`.

    This runs once per attempt on the worker's loop, so it is written for speed:
    plain attributes and one bisect per histogram.
    """

    __slots__ = ("cancelled", "duration", "failed", "killed", "retried", "succeeded", "wait")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.succeeded = self.failed = self.retried = self.killed = self.cancelled = 0
        self.duration = _Histogram(bounds)
        self.wait = _Histogram(bounds)

    @property
    def counts(self) -> dict[str, int]:
        ran = self.succeeded + self.failed
        return {
            "started": ran, "succeeded": self.succeeded, "failed": self.failed,
            "retried": self.retried, "killed": self.killed, "cancelled": self.cancelled,
        }  # fmt: skip

    def __call__(
        self, task: Task[Any], outcome: Outcome, started_at: float, finished_at: float
    ) -> None:
        kind = type(outcome)
        if kind is Done:
            self.succeeded += 1
            took = finished_at - started_at
            duration = self.duration
            if took < 0.0:
                took = 0.0
            duration.counts[bisect_left(duration.bounds, took)] += 1  # le: took <= bound
            duration.total += took
            runnable = task.run_at if task.run_at > task.created_at else task.created_at
            waited = started_at - runnable
            wait = self.wait
            if waited < 0.0:
                waited = 0.0
            wait.counts[bisect_left(wait.bounds, waited)] += 1
            wait.total += waited
        elif kind is Cancelled:
            self.cancelled += 1
        else:
            self.failed += 1
            if kind is Retry:
                self.retried += 1
            else:
                self.killed += 1
