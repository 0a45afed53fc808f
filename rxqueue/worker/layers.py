"""Layers: middleware around the handler, as plain typed callables.

A layer is ``async def layer(next, task, ctx) -> Outcome``: it may act before
and after calling ``next(task, ctx)``, replace the outcome, or raise. Layers
are composed once, at build time, by :func:`compose`; the first layer given
is the outermost. Whatever a handler raises ends as a recorded outcome,
decided by :func:`failure_outcome`: the worker never dies of a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from rxqueue.backoff import Backoff, exponential
from rxqueue.errors import Abort, CodecError, HandlerTimeout, RetryAfter
from rxqueue.task import Killed, Outcome, Retry, Task
from rxqueue.worker.context import TaskContext

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

Next: TypeAlias = Callable[[Task[Any], TaskContext], Awaitable[Outcome]]
Layer: TypeAlias = Callable[[Next, Task[Any], TaskContext], Awaitable[Outcome]]
# Layers written as `async def` return coroutines, which the worker starts eagerly.

DEFAULT_BACKOFF: Backoff = exponential(base=1.0, factor=2.0, max=300.0, jitter=0.1)


def describe(error: BaseException) -> str:
    """How an error is recorded in ``last_error``: its type and message."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def failure_outcome(
    task: Task[Any],
    error: BaseException,
    *,
    now: float,
    backoff: Backoff = DEFAULT_BACKOFF,
    max_attempts: int | None = None,
) -> Outcome:
    """The outcome of an attempt that raised ``error``: Retry at a backoff, or Killed.

    ``Abort`` and payload errors kill at once (running again cannot help);
    ``RetryAfter`` sets the delay itself; anything else waits ``backoff(attempt)``.
    """
    reason = describe(error)
    if isinstance(error, Abort | CodecError):
        return Killed(reason)
    attempt = task.attempts + 1
    limit = max_attempts if max_attempts is not None else task.max_attempts
    if attempt >= limit:
        return Killed(f"{reason} (attempt {attempt} of {limit})")
    delay = error.seconds if isinstance(error, RetryAfter) else backoff(attempt)
    return Retry(at=now + delay, error=reason)


def compose(layers: Sequence[Layer], innermost: Next) -> Next:
    """Fold ``layers`` around ``innermost``; ``layers[0]`` runs first."""
    chain = innermost
    for layer in reversed(layers):
        chain = _bind(layer, chain)
    return chain


def _bind(layer: Layer, following: Next) -> Next:
    def bound(task: Task[Any], ctx: TaskContext) -> Awaitable[Outcome]:
        return layer(following, task, ctx)

    return bound


def retry(max_attempts: int | None = None, backoff: Backoff = DEFAULT_BACKOFF) -> Layer:
    """Retry policy for failed attempts: back to the store at ``now + backoff(attempt)``.

    ``max_attempts`` overrides each task's own limit. The retry itself is a
    stored ``run_at``, never an in-process loop, so it survives restarts.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"retry needs max_attempts >= 1, got {max_attempts!r}")

    async def retry_layer(next: Next, task: Task[Any], ctx: TaskContext) -> Outcome:
        try:
            return await next(task, ctx)
        except Exception as error:
            return failure_outcome(
                task,
                error,
                now=ctx.worker.clock(),
                backoff=backoff,
                max_attempts=max_attempts,
            )

    return retry_layer


def timeout(seconds: float) -> Layer:
    """Cancel a handler that runs longer than ``seconds``; a failed attempt."""
    if seconds <= 0:
        raise ValueError(f"timeout needs seconds > 0, got {seconds!r}")

    async def timeout_layer(next: Next, task: Task[Any], ctx: TaskContext) -> Outcome:
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                return await next(task, ctx)
        except TimeoutError as exc:
            if limit.expired():
                raise HandlerTimeout(f"handler ran longer than {seconds:g}s") from exc
            raise

    return timeout_layer


def rate_limit(n: int, per: float) -> Layer:
    """Start at most ``n`` handlers per ``per`` seconds (bursts up to ``n``).

    A GCRA (virtual scheduling) limiter: each start reserves the next slot
    before waiting, so concurrent consumers queue fairly in arrival order.
    """
    if n < 1 or per <= 0:
        raise ValueError(f"rate_limit needs n >= 1 and per > 0, got n={n!r}, per={per!r}")
    spacing = per / n
    tolerance = per - spacing
    theoretical_arrival = 0.0

    async def rate_limit_layer(next: Next, task: Task[Any], ctx: TaskContext) -> Outcome:
        nonlocal theoretical_arrival
        now = asyncio.get_running_loop().time()
        arrival = max(theoretical_arrival, now)
        theoretical_arrival = arrival + spacing
        wait = arrival - tolerance - now
        if wait > 0:
            await asyncio.sleep(wait)
        return await next(task, ctx)

    return rate_limit_layer


def opentelemetry(tracer_provider: TracerProvider | None = None) -> Layer:
    """One OpenTelemetry span per attempt, ``rxqueue.task <queue>`` (kind CONSUMER).

    The span continues the trace of the span that was current when the task was
    pushed (stored in ``metadata["traceparent"]``, see :mod:`rxqueue.tracing`); a
    task pushed outside any span starts a new trace. Attributes: ``rxqueue.task.id``,
    ``rxqueue.queue``, ``rxqueue.attempt``, ``rxqueue.max_attempts``,
    ``rxqueue.worker`` and ``rxqueue.outcome`` (``done``, ``retry``, ``killed`` or
    ``cancelled``); a failed attempt's span has status ERROR and records the
    exception (or, when a ``layers.retry`` inside this layer turned it into an
    outcome, its text in ``rxqueue.error``). Give it first, so that its span covers
    the other layers. ``tracer_provider``: the global one when None.

    Needs opentelemetry-api (``pip install 'rxqueue[otel]'``), imported only here.
    """
    from rxqueue.tracing import opentelemetry_layer

    return opentelemetry_layer(tracer_provider)
