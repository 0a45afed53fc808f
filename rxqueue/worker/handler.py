"""Adapting a user's handler: signature, payload type, sync or async.

Inspected once at build time, so the hot path is one decode and one call.

A handler is called as ``handler(payload, ctx)`` when its signature accepts
two positional arguments, else as ``handler(payload)``; any other shape is a
:class:`BuildError`. It runs on the event loop when it is async: an ``async
def``, a ``functools.partial`` of one, one under ``functools.wraps``
decorators, an instance with ``async def __call__``, or a function marked with
``inspect.markcoroutinefunction``. Anything else runs in a thread, and if it
returns an awaitable (``lambda job: send(job)``) that is awaited on the loop, so
the work is always finished before the task is recorded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rxqueue.codec import DEFAULT_CODEC, Codec, Converter, converter_for, identity
from rxqueue.errors import BuildError
from rxqueue.task import Task
from rxqueue.worker.context import TaskContext

Call = Callable[[Any, TaskContext], Awaitable[Any]]

_EXPECTED = "`async def handler(job)` or `async def handler(job, ctx)`"
_UNWRAP_LIMIT = 32  # partial-of-wrapped-of-partial chains are short; a cycle must end


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """How to call one handler: its name, its call, and how to decode payloads."""

    name: str
    call: Call
    convert: Converter  # decoded JSON -> the type of the first parameter
    convert_item: Converter  # for batch handlers: decoded JSON -> list element type
    codec: Codec

    def decode(self, task: Task[Any], convert: Converter | None = None) -> Any:
        args = task.args
        if type(args) is bytes:  # the usual case, checked first: this runs per task
            args = self.codec.decode(args)
        elif isinstance(args, bytearray | memoryview):
            args = self.codec.decode(bytes(args))
        convert = convert or self.convert
        return args if convert is identity else convert(args)


def inspect_handler(handler: Callable[..., Any], codec: Codec = DEFAULT_CODEC) -> HandlerSpec:
    if not callable(handler):
        raise BuildError(f"the handler must be callable, got {type(handler).__name__}")
    name = _name(handler)
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError) as exc:
        raise BuildError(f"cannot read the signature of handler {name}: {exc}") from exc
    takes_ctx, payload_parameter = _shape(name, signature)
    annotation = _annotation(handler, payload_parameter)
    convert = converter_for(annotation)
    item_type = _sequence_item(annotation)
    convert_item = converter_for(item_type) if item_type is not None else convert
    return HandlerSpec(
        name=name,
        call=_call(handler, takes_ctx),
        convert=convert,
        convert_item=convert_item,
        codec=codec,
    )


def _name(handler: Callable[..., Any]) -> str:
    if isinstance(handler, functools.partial):
        return f"partial({_name(handler.func)})"
    return getattr(handler, "__qualname__", None) or type(handler).__name__


def _shape(name: str, signature: inspect.Signature) -> tuple[bool, inspect.Parameter]:
    """Whether the handler takes ctx, and the parameter that receives the payload."""
    payload, ctx = object(), object()
    try:
        bound, takes_ctx = signature.bind(payload, ctx), True
    except TypeError:
        try:
            bound, takes_ctx = signature.bind(payload), False
        except TypeError as exc:
            raise BuildError(
                f"handler {name}{_shape_only(signature)} cannot be called as "
                f"handler(payload) or handler(payload, ctx) ({exc}); write it as {_EXPECTED}"
            ) from None
    for parameter_name, value in bound.arguments.items():
        if value is payload or (isinstance(value, tuple) and value and value[0] is payload):
            return takes_ctx, signature.parameters[parameter_name]
    raise AssertionError("the payload binds to a parameter")  # pragma: no cover


def _shape_only(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations: the error is about its shape, not its types."""
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
        return_annotation=empty,
    )


def _annotation(handler: Callable[..., Any], parameter: inspect.Parameter) -> Any:
    # eval_str resolves `from __future__ import annotations` strings through partials,
    # functools.wraps, a callable instance's __call__ and a class's __init__ alike.
    try:
        resolved = inspect.signature(handler, eval_str=True).parameters.get(parameter.name)
    except Exception:  # unresolvable forward refs: fall back to the raw annotation
        resolved = None
    return (resolved or parameter).annotation


def _call(handler: Callable[..., Any], takes_ctx: bool) -> Call:
    if inspect.iscoroutinefunction(handler):
        # Calling it always gives a coroutine: hand that straight to the worker.
        if takes_ctx:
            return lambda args, ctx: handler(args, ctx)
        return lambda args, ctx: handler(args)

    if _async_underneath(handler):
        # Async under a sync-looking layer: call on the loop, await what comes back.
        async def call_async(args: Any, ctx: TaskContext) -> Any:
            result = handler(args, ctx) if takes_ctx else handler(args)
            return (await result) if inspect.isawaitable(result) else result

        return call_async

    async def call_in_thread(args: Any, ctx: TaskContext) -> Any:
        bound = (
            functools.partial(handler, args, ctx) if takes_ctx else functools.partial(handler, args)
        )
        result = await asyncio.to_thread(bound)
        # A plain function may return the work itself (`lambda job: send(job)`):
        # run it here, or the task would be Done with the coroutine never awaited.
        if inspect.isawaitable(result):
            result = await result
        return result

    return call_in_thread


def _async_underneath(handler: Any) -> bool:
    """Whether an async function sits under wraps-decorators, partials or ``__call__``."""
    target = handler
    for _ in range(_UNWRAP_LIMIT):
        try:
            target = inspect.unwrap(target)
        except ValueError:  # a __wrapped__ cycle: nothing to find
            return False
        if not isinstance(target, functools.partial):
            break
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    if isinstance(target, type) or inspect.isroutine(target):
        return False  # a class is constructed, not awaited; a plain function is sync
    return _async_underneath(type(target).__call__)  # an instance: its class's __call__


def _sequence_item(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, Sequence):
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None
