"""Adapting handlers: which shapes are accepted, and that the work always runs before Done."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxqueue import BuildError, CodecError
from rxqueue.worker.handler import inspect_handler

CTX: Any = object()  # stands in for a TaskContext: handlers here only pass it through

Calls = list[tuple[Any, ...]]


def _run(call: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await call

    return asyncio.run(main())


# --- every shape of handler runs its work exactly once before call() returns ----------


def _async_def(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    if with_ctx:

        async def handler(job: Any, ctx: Any) -> Any:
            calls.append((job, ctx))
            return job

    else:

        async def handler(job: Any) -> Any:  # type: ignore[misc]
            calls.append((job,))
            return job

    return handler


def _sync_def(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    if with_ctx:

        def handler(job: Any, ctx: Any) -> Any:
            calls.append((job, ctx))
            return job

    else:

        def handler(job: Any) -> Any:  # type: ignore[misc]
            calls.append((job,))
            return job

    return handler


def _lambda_returning_coroutine(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    send = _async_def(calls, with_ctx)
    if with_ctx:
        return lambda job, ctx: send(job, ctx)
    return lambda job: send(job)


def _wrapped(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    inner = _async_def(calls, with_ctx)

    @functools.wraps(inner)
    def logged(*args: Any) -> Any:  # a sync decorator that hands back the coroutine
        return inner(*args)

    return logged


def _decorated_without_wraps(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    inner = _async_def(calls, with_ctx)
    if with_ctx:

        def decorated(job: Any, ctx: Any) -> Any:
            return inner(job, ctx)

    else:

        def decorated(job: Any) -> Any:  # type: ignore[misc]
            return inner(job)

    return decorated


def _partial_of_async(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    if with_ctx:

        async def handler(tag: str, job: Any, ctx: Any) -> Any:
            calls.append((job, ctx))
            return job

    else:

        async def handler(tag: str, job: Any) -> Any:  # type: ignore[misc]
            calls.append((job,))
            return job

    return functools.partial(handler, "tag")


def _partial_of_sync(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    return functools.partial(_sync_def(calls, with_ctx))


class _AsyncCallable:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls


class _AsyncWithCtx(_AsyncCallable):
    async def __call__(self, job: Any, ctx: Any) -> Any:
        self.calls.append((job, ctx))
        return job


class _AsyncWithoutCtx(_AsyncCallable):
    async def __call__(self, job: Any) -> Any:
        self.calls.append((job,))
        return job


class _SyncWithCtx(_AsyncCallable):
    def __call__(self, job: Any, ctx: Any) -> Any:
        self.calls.append((job, ctx))
        return job


def _callable_instance(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    return _AsyncWithCtx(calls) if with_ctx else _AsyncWithoutCtx(calls)


def _partial_of_callable_instance(calls: Calls, with_ctx: bool) -> Callable[..., Any]:
    return functools.partial(_callable_instance(calls, with_ctx))


SHAPES: list[Callable[[Calls, bool], Callable[..., Any]]] = [
    _async_def,
    _sync_def,
    _lambda_returning_coroutine,
    _wrapped,
    _decorated_without_wraps,
    _partial_of_async,
    _partial_of_sync,
    _callable_instance,
    _partial_of_callable_instance,
]


@given(
    shape=st.sampled_from(SHAPES),
    with_ctx=st.booleans(),
    payload=st.integers() | st.text(max_size=5) | st.none(),
)
def test_every_handler_shape_does_its_work_once_before_call_returns(
    shape: Callable[[Calls, bool], Callable[..., Any]], with_ctx: bool, payload: Any
) -> None:
    calls: Calls = []
    spec = inspect_handler(shape(calls, with_ctx))
    result = _run(spec.call(payload, CTX))
    assert calls == [(payload, CTX) if with_ctx else (payload,)]
    assert result == payload


@pytest.mark.skipif(
    not hasattr(inspect, "markcoroutinefunction"), reason="inspect.markcoroutinefunction is 3.12+"
)
async def test_a_function_marked_as_a_coroutine_function_is_awaited() -> None:
    calls: Calls = []
    marked = inspect.markcoroutinefunction(lambda job: _async_def(calls, False)(job))
    await inspect_handler(marked).call("job", CTX)
    assert calls == [("job",)]


async def test_a_lambda_around_an_async_send_runs_the_send() -> None:
    sent: list[Any] = []

    async def send(job: Any) -> None:
        sent.append(job)

    spec = inspect_handler(lambda job: send(job))
    assert await spec.call({"to": "a@b.c"}, CTX) is None
    assert sent == [{"to": "a@b.c"}]


async def test_wrapped_async_handlers_are_called_on_the_loop_and_sync_ones_in_a_thread() -> None:
    threads: list[int] = []

    async def work(job: Any) -> None:
        pass

    @functools.wraps(work)
    def on_loop(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return work(*args)

    def in_thread(job: Any) -> None:
        threads.append(threading.get_ident())

    await inspect_handler(on_loop).call(1, CTX)
    await inspect_handler(in_thread).call(2, CTX)
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident()


async def test_a_sync_callable_instance_runs_in_a_thread() -> None:
    calls: Calls = []
    assert await inspect_handler(_SyncWithCtx(calls)).call("job", CTX) == "job"
    assert calls == [("job", CTX)]


# --- signatures: (payload) or (payload, ctx), nothing else ------------------------------


async def no_params() -> None: ...


async def three_params(a: Any, b: Any, c: Any) -> None: ...


async def keyword_only(job: Any, *, token: str) -> None: ...


async def kwargs_only(**options: Any) -> None: ...


@pytest.mark.parametrize(
    ("handler", "shown"),
    [
        (no_params, r"no_params\(\)"),
        (three_params, r"three_params\(a, b, c\)"),
        (keyword_only, r"keyword_only\(job, \*, token\)"),
        (kwargs_only, r"kwargs_only\(\*\*options\)"),
        (lambda: None, r"<lambda>\(\)"),
    ],
)
def test_handlers_that_cannot_take_a_payload_are_refused_at_build(
    handler: Callable[..., Any], shown: str
) -> None:
    with pytest.raises(BuildError, match=f"handler .*{shown} cannot be called") as caught:
        inspect_handler(handler)
    message = str(caught.value)
    assert "`async def handler(job)` or `async def handler(job, ctx)`" in message


def test_a_refused_partial_is_named_by_its_function() -> None:
    with pytest.raises(BuildError, match=r"handler partial\(three_params\)\(\) cannot"):
        inspect_handler(functools.partial(three_params, 1, 2, 3))


async def test_var_positional_and_a_defaulted_second_parameter_take_ctx() -> None:
    seen: list[Any] = []

    async def star_args(*args: Any) -> None:
        seen.append(args)

    async def ctx_optional(job: Any, ctx: Any = None) -> None:
        seen.append((job, ctx))

    async def keyword_option(job: Any, *, verbose: bool = False) -> None:
        seen.append((job,))

    for handler in (star_args, ctx_optional, keyword_option):
        await inspect_handler(handler).call("job", CTX)
    assert seen == [("job", CTX), ("job", CTX), ("job",)]


class Receipt:
    def __init__(self, job: Any) -> None:
        self.job = job


async def test_a_class_is_called_by_its_constructor_signature() -> None:
    receipt = await inspect_handler(Receipt).call("job", CTX)
    assert isinstance(receipt, Receipt)
    assert receipt.job == "job"


# --- the payload annotation decides the conversion --------------------------------------


class Signup(TypedDict):
    email: str


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class PointHandler:
    async def __call__(self, job: Point) -> None: ...


async def signup_handler(job: Signup, ctx: Any) -> str:
    return job["email"]


async def points_handler(jobs: list[Point]) -> int:
    return len(jobs)


async def test_typeddict_annotated_handlers_get_checked_dicts() -> None:
    spec = inspect_handler(signup_handler)
    payload = spec.convert({"email": "a@b.c"})
    assert payload == {"email": "a@b.c"}
    assert await spec.call(payload, CTX) == "a@b.c"
    with pytest.raises(CodecError, match=r"Signup has no key\(s\) \['name'\]"):
        spec.convert({"email": "a@b.c", "name": "A"})


@pytest.mark.parametrize(
    "handler",
    [PointHandler(), functools.partial(PointHandler())],
    ids=["callable instance", "partial of an instance"],
)
def test_annotations_are_read_through_instances_and_partials(handler: Any) -> None:
    converted = inspect_handler(handler).convert({"x": 1, "y": 2})
    assert isinstance(converted, Point)
    assert (converted.x, converted.y) == (1, 2)


def test_batch_handlers_convert_each_item_to_the_list_element_type() -> None:
    spec = inspect_handler(points_handler)
    item = spec.convert_item({"x": 3, "y": 4})
    assert isinstance(item, Point)
    assert isinstance(spec.convert([{"x": 1, "y": 2}])[0], Point)
