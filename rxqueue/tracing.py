"""OpenTelemetry tracing: the push-side trace context and the worker's span layer.

**Push side.** When a span is current as tasks are pushed (``push``,
``push_many``, ``send``, ``send_many``), its W3C trace context is stored in each
task's metadata under :data:`TRACEPARENT` (``metadata["traceparent"]``, plus
``metadata["tracestate"]`` when the span carries one). Nothing is asked of the
caller; metadata that already holds a ``traceparent`` keeps it. This needs no
import: a span can only be current if the application imported
``opentelemetry.trace``, so when that module is not loaded the check is one
dictionary lookup per push call.

**Worker side.** :func:`opentelemetry_layer` (``layers.opentelemetry()``)
opens one span per attempt, a child of the push-time span when the task
carries one (else the root of a new trace), and records the outcome. It needs
``opentelemetry-api`` (``pip install 'rxqueue[otel]'``), imported only then.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from rxqueue.task import Outcome, PushOptions, Task
    from rxqueue.worker.context import TaskContext
    from rxqueue.worker.layers import Layer, Next

__all__ = ["OUTCOME", "TRACEPARENT", "TRACESTATE", "inject", "opentelemetry_layer", "traced"]

TRACEPARENT: Final = "traceparent"
"""The metadata key that holds the push-time span's W3C ``traceparent``."""
TRACESTATE: Final = "tracestate"
"""The metadata key of the W3C ``tracestate``, stored only when the span has one."""
OUTCOME: Final = "rxqueue.outcome"
"""The span attribute recording an attempt's outcome: done, retry, killed or cancelled."""

_propagator: Any = None  # TraceContextTextMapPropagator, made on first use


def _w3c() -> Any:
    global _propagator
    if _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()
    return _propagator


def inject() -> dict[str, str] | None:
    """The current span's W3C trace context as metadata entries, or None when no
    span is current (or ``opentelemetry.trace`` was never imported)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _w3c().inject(carrier)
    return carrier or None


def traced(options: PushOptions) -> PushOptions:
    """``options`` whose metadata carries the current trace context (``options`` itself
    when no span is current, or its metadata already names a ``traceparent``)."""
    context = inject()
    if context is None:
        return options
    metadata = options.metadata or {}
    if TRACEPARENT in metadata:
        return options
    # Copied field by field, not by dataclasses.replace (which checks every option
    # again) or copy.copy: both cost more than the rest of a push call.
    copied = object.__new__(type(options))
    for name in options.__dataclass_fields__:
        object.__setattr__(copied, name, getattr(options, name))
    object.__setattr__(copied, "metadata", {**metadata, **context})
    return copied


def traced_tasks(tasks: list[Task[Any]]) -> list[Task[Any]]:
    """``tasks`` built by the caller (``send``), each given the current trace context
    unless its metadata already names a ``traceparent``."""
    context = inject()
    if context is None:
        return tasks
    return [
        task if TRACEPARENT in task.metadata else task.evolve(metadata={**task.metadata, **context})
        for task in tasks
    ]


def _api() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError(
            "layers.opentelemetry() needs opentelemetry-api: pip install 'rxqueue[otel]'"
        ) from None
    return trace


def opentelemetry_layer(tracer_provider: TracerProvider | None = None) -> Layer:
    """A layer that opens one span per attempt (see ``layers.opentelemetry``)."""
    trace = _api()
    from opentelemetry.context import Context, attach, detach
    from opentelemetry.trace import Link, SpanKind, StatusCode

    from rxqueue import __version__
    from rxqueue.task import Cancelled, Done, Retry
    from rxqueue.worker.layers import describe, failure_outcome

    tracer = trace.get_tracer("rxqueue", __version__, tracer_provider=tracer_provider)
    start_span, set_span_in_context = tracer.start_span, trace.set_span_in_context
    extract = _w3c().extract
    consumer = SpanKind.CONSUMER
    root = Context()  # contexts are immutable: one empty one serves every new trace

    def parent_of(task: Task[Any]) -> Any:
        metadata = task.metadata
        return extract(metadata, context=root) if TRACEPARENT in metadata else root

    def links(batch: Sequence[Task[Any]]) -> list[Any]:
        """A batch's other tasks, linked to their push-time spans."""
        found = []
        for task in batch[1:]:
            if TRACEPARENT in task.metadata:
                context = trace.get_current_span(parent_of(task)).get_span_context()
                if context.is_valid:
                    found.append(Link(context))
        return found

    async def tracing_layer(next: Next, task: Task[Any], ctx: TaskContext) -> Outcome:
        queue, batch = task.queue, ctx.tasks
        parent = parent_of(task)
        many = len(batch) > 1
        span = start_span(
            f"rxqueue.task {queue}", parent, consumer, None, links(batch) if many else None
        )
        # A sampled-out span records nothing but carries the trace on to the handler's
        # calls; the API without an SDK gives an invalid one, which carries nothing.
        recording = span.is_recording()
        if not recording and not span.get_span_context().is_valid:
            return await next(task, ctx)
        if recording:
            attributes: dict[str, Any] = {
                "rxqueue.task.id": task.id,
                "rxqueue.queue": queue,
                "rxqueue.attempt": task.attempts + 1,
                "rxqueue.max_attempts": task.max_attempts,
                "rxqueue.worker": ctx.worker.name,
                "messaging.system": "rxqueue",
            }
            if many:
                attributes["rxqueue.batch.size"] = len(batch)
            span.set_attributes(attributes)
        token = attach(set_span_in_context(span, parent))
        try:
            try:
                outcome: Outcome = await next(task, ctx)
            except BaseException as error:
                if recording:
                    failed(span, task, ctx, error)
                raise
            if recording:
                finished(span, outcome)
            return outcome
        finally:
            detach(token)
            span.end()

    def failed(span: Any, task: Task[Any], ctx: TaskContext, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError) and ctx.cancelled:
            span.set_attribute(OUTCOME, "cancelled")
            return
        # What the worker will make of it: a retry, or killed (Abort, last attempt).
        decided = failure_outcome(task, error, now=ctx.worker.clock())
        span.set_attribute(OUTCOME, "retry" if isinstance(decided, Retry) else "killed")
        span.set_attribute("rxqueue.error", describe(error))
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, describe(error))

    def finished(span: Any, outcome: Outcome) -> None:
        if isinstance(outcome, Done):
            span.set_attribute(OUTCOME, "done")
            span.set_status(StatusCode.OK)
        elif isinstance(outcome, Cancelled):
            span.set_attribute(OUTCOME, "cancelled")
        else:  # Retry or Killed, decided by a layer inside this one (layers.retry)
            span.set_attribute(OUTCOME, "retry" if isinstance(outcome, Retry) else "killed")
            span.set_attribute("rxqueue.error", outcome.error)
            span.set_status(StatusCode.ERROR, outcome.error)

    return tracing_layer
