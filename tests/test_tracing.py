"""OpenTelemetry: a span per attempt, child of the span current at push time.

Spans are collected by the SDK's in-memory exporter; every test runs on each
backend of the conformance suite (memory, SQLite, ...), since the trace context
travels through the store in the task's metadata.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode, get_current_span

from rxqueue import Abort, MemoryBackend, Task, TaskContext, WorkerBuilder, layers, ops
from rxqueue.backoff import constant
from rxqueue.tracing import OUTCOME, TRACEPARENT
from tests.conftest import BackendKit

ATTEMPT_SPAN = "rxqueue.task jobs"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def attempts(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    spans = [span for span in exporter.get_finished_spans() if span.name == ATTEMPT_SPAN]
    return sorted(spans, key=lambda span: span.attributes["rxqueue.attempt"])  # type: ignore[index]


def worker(backend: Any, handler: Any, provider: TracerProvider, *extra: Any) -> Any:
    builder = WorkerBuilder("traced").backend(backend).layer(layers.opentelemetry(provider))
    for layer in extra:
        builder = builder.layer(layer)
    return builder.build(handler)


async def test_a_task_that_retries_once_gives_two_spans_under_the_push_span(
    kit: BackendKit, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    backend = await kit.make(queue="jobs", max_attempts=3)

    async def flaky(job: dict[str, int], ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with provider.get_tracer("app").start_as_current_span("enqueue") as enqueue:
        task_id = await backend.push({"n": 1})
    pushed = enqueue.get_span_context()

    summary = await worker(
        backend, flaky, provider, layers.retry(backoff=constant(0))
    ).run_until_idle()
    assert (summary.done, summary.retried) == (1, 1)

    first, second = attempts(exporter)
    for span, attempt in ((first, 1), (second, 2)):
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == (pushed.trace_id, pushed.span_id)
        assert span.context is not None and span.context.trace_id == pushed.trace_id
        assert span.attributes is not None
        assert span.attributes["rxqueue.task.id"] == task_id
        assert span.attributes["rxqueue.queue"] == "jobs"
        assert span.attributes["rxqueue.attempt"] == attempt
        assert span.attributes["rxqueue.max_attempts"] == 3
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes[OUTCOME] == "retry"
    assert first.attributes["rxqueue.error"] == "RuntimeError: first attempt fails"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes[OUTCOME] == "done"
    assert second.status.status_code is StatusCode.OK


async def test_a_raised_failure_is_recorded_as_an_exception_and_its_outcome(
    kit: BackendKit, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    backend = await kit.make(queue="jobs", max_attempts=2)

    async def handler(job: dict[str, str], ctx: TaskContext) -> None:
        raise Abort("bad order")  # killed at once, whatever attempts are left

    with provider.get_tracer("app").start_as_current_span("enqueue"):
        await backend.push({"kind": "abort"})
    summary = await worker(backend, handler, provider).run_until_idle()
    assert summary.killed == 1

    (span,) = attempts(exporter)
    assert span.attributes is not None and span.attributes[OUTCOME] == "killed"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "Abort: bad order"
    (event,) = span.events
    assert event.name == "exception"
    assert (
        event.attributes is not None
        and event.attributes["exception.type"] == "rxqueue.errors.Abort"
    )


async def test_a_task_pushed_outside_any_span_starts_a_new_trace(
    kit: BackendKit, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    backend = await kit.make(queue="jobs")
    task_id = await backend.push({"n": 1})
    stored = await _get(backend, task_id)
    assert stored is None or TRACEPARENT not in stored.metadata

    async def handler(job: dict[str, int]) -> None:
        return None

    # Even a worker run inside a span does not adopt its tasks into that trace.
    with provider.get_tracer("app").start_as_current_span("notebook cell"):
        await worker(backend, handler, provider).run_until_idle()
    (span,) = attempts(exporter)
    assert span.parent is None
    assert span.attributes is not None and span.attributes[OUTCOME] == "done"


async def _get(backend: Any, task_id: str) -> Task[Any] | None:
    from rxqueue import Capability

    return await backend.get(task_id) if Capability.GET in backend.capabilities else None


async def test_every_push_path_stores_the_trace_context_and_keeps_the_callers() -> None:
    provider = TracerProvider()
    backend = MemoryBackend(queue="jobs")
    with provider.get_tracer("app").start_as_current_span("enqueue") as span:
        context = span.get_span_context()
        flags = int(context.trace_flags)
        expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
        one = await backend.push({"n": 1}, metadata={"tenant": "a"})
        many = await backend.push_many([{"n": 2}, {"n": 3}])
        sent = await backend.send(Task(args={"n": 4}, metadata={"tenant": "b"}))
        keyed = await backend.push_many([{"n": 5}], unique_keys=["k"])
        own = await backend.push(
            {"n": 6}, metadata={TRACEPARENT: "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        )
    for task_id in [one, *many, sent, *keyed]:
        stored = await backend.get(task_id)
        assert stored is not None and stored.metadata[TRACEPARENT] == expected
    assert (await backend.get(one)).metadata["tenant"] == "a"  # type: ignore[union-attr]
    assert (await backend.get(sent)).metadata["tenant"] == "b"  # type: ignore[union-attr]
    kept = await backend.get(own)
    assert kept is not None and kept.metadata[TRACEPARENT].startswith("00-111")
    provider.shutdown()


async def test_a_cancelled_attempt_records_its_outcome(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    backend = MemoryBackend(queue="jobs")
    task_id = await backend.push({"n": 1})
    running = asyncio.Event()

    async def waits(job: dict[str, int]) -> None:
        running.set()
        await asyncio.Event().wait()

    traced = worker(backend, waits, provider)
    run = asyncio.create_task(traced.run_until_idle())
    await running.wait()
    assert traced.cancel(task_id, "no longer needed")
    summary = await run
    assert summary.cancelled == 1
    (span,) = attempts(exporter)
    assert span.attributes is not None and span.attributes[OUTCOME] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET


async def test_a_batch_is_one_span_linked_to_each_tasks_push_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    backend = MemoryBackend(queue="jobs")
    tracer = provider.get_tracer("app")
    pushed = []
    for n in range(3):
        with tracer.start_as_current_span(f"enqueue {n}") as span:
            await backend.push({"n": n})
            pushed.append(span.get_span_context())

    async def many(jobs: list[dict[str, int]]) -> None:
        return None

    await worker(backend.pipe(ops.batch(3, timeout=5)), many, provider).run_until_idle()
    (span,) = attempts(exporter)
    assert span.attributes is not None and span.attributes["rxqueue.batch.size"] == 3
    assert span.parent is not None and span.parent.span_id == pushed[0].span_id
    assert [link.context.span_id for link in span.links] == [c.span_id for c in pushed[1:]]


def test_the_layer_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'rxqueue\[otel\]'"):
        layers.opentelemetry()


def test_pushing_imports_no_opentelemetry() -> None:
    """Without a traced application, rxqueue never imports opentelemetry."""
    code = (
        "import asyncio, sys, rxqueue\n"
        "backend = rxqueue.MemoryBackend()\n"
        "async def main():\n"
        "    await backend.push({'n': 1})\n"
        "    await backend.push_many([{'n': 2}])\n"
        "asyncio.run(main())\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


async def test_a_sampled_out_attempt_still_carries_the_trace_to_the_handler(
    exporter: InMemorySpanExporter,
) -> None:
    """Nothing is recorded, but calls the handler makes go on in the push-time trace."""
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    unsampled.add_span_processor(SimpleSpanProcessor(exporter))
    backend = MemoryBackend(queue="jobs")
    with TracerProvider().get_tracer("app").start_as_current_span("enqueue") as enqueue:
        await backend.push({"n": 1})
    seen: list[int] = []

    async def handler(job: dict[str, int]) -> None:
        seen.append(get_current_span().get_span_context().trace_id)

    summary = await worker(backend, handler, unsampled).run_until_idle()
    assert summary.done == 1
    assert seen == [enqueue.get_span_context().trace_id]
    assert exporter.get_finished_spans() == ()
    unsampled.shutdown()


async def test_without_an_sdk_the_layer_only_passes_the_attempt_on() -> None:
    backend = MemoryBackend(queue="jobs")
    await backend.push({"n": 1})

    async def handler(job: dict[str, int]) -> str:
        assert not get_current_span().is_recording()
        return "ok"

    traced = worker(backend, handler, NoOpTracerProvider())
    assert (await traced.run_until_idle()).done == 1
