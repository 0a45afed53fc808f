"""What watching a worker costs: memory-backend throughput with no-op handlers,
with no layer, with Prometheus metrics, and with the OpenTelemetry tracing layer.

* no layer: the memory benchmark's rxqueue run (``n`` tasks pushed first, only
  ``run_until_idle`` timed, concurrency 16);
* Prometheus: the same, with ``rxqueue.metrics.prometheus(worker, registry)``
  attached (counters and histograms fed from every task's events);
* OpenTelemetry: the same, with ``.layer(layers.opentelemetry())``: a span per
  attempt. With the OpenTelemetry SDK installed the spans are recorded (the
  layer is given an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` whose
  exporter drops them), as where tracing is on; without it, the API's
  non-recording spans.

The goal (issue 11): each costs less than 15% of the throughput without it.
Runs are interleaved and the medians compared; a layer that is not available
(not written yet, or its package missing) is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import time
from collections.abc import Callable
from typing import Any

import rxqueue
from benchmarks.common import (
    Report,
    Skipped,
    Verdict,
    fmt_ratio,
    interleave,
    noop,
    payloads,
    rate_table,
    ratio,
    round_ratios,
    rows_of,
    spread,
)

CONCURRENCY = 16
GOAL = 0.15  # each costs < 15% of the throughput without it
NONE = "no layer"
PROMETHEUS = "Prometheus metrics (rxqueue.metrics.prometheus)"
OPENTELEMETRY = "OpenTelemetry tracing (layers.opentelemetry())"
NON_RECORDING = "OpenTelemetry tracing, no SDK (non-recording spans)"
SAMPLED = "OpenTelemetry tracing, SDK sampling 10% of traces"

Attach = Callable[[rxqueue.WorkerBuilder], rxqueue.WorkerBuilder]


async def run(
    n: int,
    attach: Attach | None = None,
    metrics: bool = False,
    flush: Callable[[], object] | None = None,
) -> float:
    """tasks/s of ``run_until_idle`` over ``n`` pushed no-op tasks (and ``flush()``:
    the spans' export is part of the cost)."""
    backend = rxqueue.connect("memory://")
    await backend.push_many(payloads(n))
    builder = rxqueue.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY)
    if attach is not None:
        builder = attach(builder)
    worker = builder.build(noop)
    exported = None
    if metrics:
        from prometheus_client import CollectorRegistry

        exported = rxqueue.metrics.prometheus(worker, CollectorRegistry())
    start = time.perf_counter()
    summary = await worker.run_until_idle()
    if flush is not None:
        flush()
    elapsed = time.perf_counter() - start
    if exported is not None:
        exported.close()
    if summary.done != n:
        raise RuntimeError(f"expected {n} tasks done, got {summary.done}")
    return n / elapsed


def recording_provider(sample: float = 1.0) -> tuple[Any, str]:
    """An SDK tracer provider that records every span and drops it in a background
    exporter, as a traced service's does minus the network; None without the SDK.
    Also what the spans are, for the notes."""
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        return None, "opentelemetry-sdk not installed: the API's non-recording spans"
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if sample >= 1.0:
        provider = TracerProvider()
        how = "spans recorded (SDK TracerProvider, BatchSpanProcessor, exporter dropping them)"
    else:  # what a busy service runs: a share of traces recorded, the rest passed on
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sample)))
        how = f"SDK sampling {sample:.0%} of traces (ParentBased(TraceIdRatioBased)), as above"
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider, how


def tracing(*, record: bool = True, sample: float = 1.0) -> tuple[Attach | None, str, Any]:
    """``.layer(layers.opentelemetry(...))`` and how spans are handled, or None and why not.
    ``record=False``: the API's no-op provider (non-recording spans), as with no SDK."""
    from rxqueue.worker import layers

    factory = getattr(layers, "opentelemetry", None)
    if factory is None:
        reason = "not available: rxqueue.worker.layers.opentelemetry() does not exist yet"
        return None, reason, None
    if importlib.util.find_spec("opentelemetry") is None:
        reason = "not available: opentelemetry-api not installed (pip install -e '.[otel]')"
        return None, reason, None
    if record:
        provider, how = recording_provider(sample)
    else:
        from opentelemetry.trace import NoOpTracerProvider

        provider, how = NoOpTracerProvider(), "the API's no-op provider: spans not recorded"
    try:
        if provider is not None and "tracer_provider" in inspect.signature(factory).parameters:
            layer = factory(tracer_provider=provider)
        else:
            layer = factory()
            how = "the global tracer provider (none set: non-recording spans)"
    except ImportError as exc:
        return None, f"not available: {exc}", None
    return (lambda builder: builder.layer(layer)), how, provider


def main(n: int = 100_000, repeat: int = 5) -> Report:
    runs: dict[str, Callable[[], float]] = {NONE: lambda: asyncio.run(run(n))}
    skipped: list[Skipped] = []
    notes: dict[str, str] = {}
    if importlib.util.find_spec("prometheus_client") is None:
        reason = "not available: prometheus-client not installed (pip install -e '.[metrics]')"
        skipped.append(Skipped(PROMETHEUS, reason))
    else:
        runs[PROMETHEUS] = lambda: asyncio.run(run(n, metrics=True))
    attach, how, provider = tracing()
    providers = [provider]
    if attach is None:
        skipped.append(Skipped(OPENTELEMETRY, how))
    else:
        flush = getattr(provider, "force_flush", None)
        runs[OPENTELEMETRY] = lambda: asyncio.run(run(n, attach, flush=flush))
        notes[OPENTELEMETRY] = how
        bare, bare_how, _ = tracing(record=False)
        if bare is not None and how.startswith("spans recorded"):
            runs[NON_RECORDING] = lambda: asyncio.run(run(n, bare))
            notes[NON_RECORDING] = bare_how
            sampled, sampled_how, sampled_provider = tracing(sample=0.1)
            if sampled is not None:
                sampled_flush = getattr(sampled_provider, "force_flush", None)
                runs[SAMPLED] = lambda: asyncio.run(run(n, sampled, flush=sampled_flush))
                notes[SAMPLED] = sampled_how
                providers.append(sampled_provider)
    try:
        results = interleave(runs, repeat)
    finally:
        for each in providers:
            if hasattr(each, "shutdown"):
                each.shutdown()  # the span processor's thread
    table = rate_table(
        f"Observability cost: memory backend, {n:,} no-op tasks, concurrency {CONCURRENCY}, "
        f"median of {repeat}",
        results,
        NONE,
        label=NONE,
        per_reference=True,
    )
    verdicts: list[Verdict] = []
    for name in runs:
        if name == NONE:
            continue
        r = ratio(results, name, NONE)
        cost = 1 - r
        notes[name] = "; ".join(
            filter(None, [f"costs {cost:.1%} (goal < {GOAL:.0%})", notes.get(name)])
        )
        verdicts.append(
            Verdict(
                f"observability: {name} / {NONE}",
                f"{fmt_ratio(r)} (costs {cost:.1%})",
                f"cost < {GOAL:.0%}",
                cost < GOAL,
                spread(round_ratios(results, name, NONE), fmt_ratio),
            )
        )
    table.notes += [
        "only run_until_idle is timed; tasks are pushed before; runs interleaved",
        *(f"{name}: {note}" for name, note in notes.items()),
        *(f"{s.name}: skipped, {s.reason}" for s in skipped),
    ]
    rows = rows_of(
        results,
        {NONE: "baseline"},
        "tasks/s",
        group=f"memory backend, {n:,} no-op tasks, concurrency {CONCURRENCY}",
        ratio_to=NONE,
        notes=notes,
    )
    report = Report()
    report.publish(Report([table], verdicts, rows, skipped))
    return report
