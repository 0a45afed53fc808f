"""Adapting a user's handler: signature, payload type, sync or async.

Inspected once at build time, so the hot path is one decode and one call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rxqueue.codec import DEFAULT_CODEC, Codec, Converter, converter_for
from rxqueue.errors import BuildError
from rxqueue.task import Task
from rxqueue.worker.context import TaskContext

Call = Callable[[Any, TaskContext], Awaitable[Any]]


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
        if isinstance(args, bytes | bytearray | memoryview):
            args = self.codec.decode(bytes(args))
        return (convert or self.convert)(args)


def inspect_handler(handler: Callable[..., Any], codec: Codec = DEFAULT_CODEC) -> HandlerSpec:
    if not callable(handler):
        raise BuildError(f"the handler must be callable, got {type(handler).__name__}")
    name = getattr(handler, "__qualname__", None) or type(handler).__name__
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError) as exc:
        raise BuildError(f"cannot read the signature of handler {name}: {exc}") from exc
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if not positional:
        raise BuildError(
            f"handler {name} takes no arguments; it must accept the payload: "
            "async def handler(job, ctx=None)"
        )
    takes_ctx = len(positional) >= 2 or positional[0].kind is inspect.Parameter.VAR_POSITIONAL
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable forward refs: fall back to raw annotations
        hints = {}
    annotation = hints.get(positional[0].name, positional[0].annotation)
    convert = converter_for(annotation)
    item_type = _sequence_item(annotation)
    convert_item = converter_for(item_type) if item_type is not None else convert

    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__  # an instance with `async def __call__`
    )
    call: Call
    if is_async:
        call = (
            (lambda args, ctx: handler(args, ctx))
            if takes_ctx
            else (lambda args, ctx: handler(args))
        )
    else:

        def call(args: Any, ctx: TaskContext) -> Awaitable[Any]:
            bound = (
                functools.partial(handler, args, ctx)
                if takes_ctx
                else functools.partial(handler, args)
            )
            return asyncio.to_thread(bound)

    return HandlerSpec(
        name=name, call=call, convert=convert, convert_item=convert_item, codec=codec
    )


def _sequence_item(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, Sequence):
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None
