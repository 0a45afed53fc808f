"""Payload codecs and typed decoding.

A :class:`Codec` turns payloads into bytes and back. The default,
:class:`JsonCodec`, uses orjson: dataclasses, dicts, lists, str/int/float/
bool/None, datetimes and UUIDs encode natively. On the way back the worker
converts the decoded JSON into the type annotated on the handler's first
parameter with :func:`converter_for`, built once per type at build time.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
import uuid
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Protocol, runtime_checkable

import orjson

from rxqueue.errors import CodecError

Converter = Callable[[Any], Any]


@runtime_checkable
class Codec(Protocol):
    """Turns payloads into bytes for the store and back."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class JsonCodec:
    """orjson-based codec (the default)."""

    __slots__ = ()

    def encode(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise CodecError(
                f"cannot encode payload of type {type(value).__name__}: {exc}. "
                "Payloads must be dataclasses, dicts, lists, str, int, float, bool, "
                "None, datetimes or UUIDs; convert other objects first or pass a "
                "custom codec=."
            ) from exc

    def decode(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            preview = bytes(data[:40])
            raise CodecError(f"payload is not valid JSON ({exc}); starts with {preview!r}") from exc


DEFAULT_CODEC = JsonCodec()


def _identity(value: Any) -> Any:
    return value


def converter_for(tp: Any) -> Converter:
    """Build a function that converts decoded JSON into ``tp``.

    Supports dataclasses (nested), ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``,
    ``X | None`` and other unions, datetime, date, UUID and the JSON scalars.
    ``Any`` (or no annotation) passes values through. Raises :class:`CodecError`
    at conversion time when a value does not fit.
    """
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return _identity
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return converter_for(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return _union_converter(typing.get_args(tp))
    if origin in (list, tuple, set, frozenset, dict) or tp in (list, dict, tuple):
        return _container_converter(tp, origin)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_converter(tp)
    if tp is datetime:
        return _parsing(datetime, datetime.fromisoformat)
    if tp is date:
        return _parsing(date, date.fromisoformat)
    if tp is uuid.UUID:
        return _parsing(uuid.UUID, uuid.UUID)
    if tp is float:
        return _scalar(float, (int, float), float)
    if tp in (str, int, bool, type(None)):
        return _scalar(tp, (tp,), _identity)
    if isinstance(tp, type):
        return _scalar(tp, (tp,), _identity)
    return _identity


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))


def _mismatch(tp: Any, value: Any) -> CodecError:
    return CodecError(
        f"payload value {value!r:.60} ({type(value).__name__}) does not fit {_type_name(tp)}"
    )


def _scalar(tp: Any, accepted: tuple[type, ...], cast: Converter) -> Converter:
    def convert(value: Any) -> Any:
        # bool is an int subclass: never let True pass as a number or vice versa.
        if isinstance(value, accepted) and (tp is bool or not isinstance(value, bool)):
            return cast(value)
        raise _mismatch(tp, value)

    return convert


def _parsing(tp: type, parse: Callable[[Any], Any]) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, tp):
            return value
        try:
            return parse(value)
        except (TypeError, ValueError) as exc:
            raise _mismatch(tp, value) from exc

    return convert


def _union_converter(options: tuple[Any, ...]) -> Converter:
    converters = [converter_for(option) for option in options]
    allows_none = type(None) in options

    def convert(value: Any) -> Any:
        if value is None and allows_none:
            return None
        for candidate in converters:
            try:
                return candidate(value)
            except CodecError:
                continue
        raise CodecError(f"payload value {value!r:.60} fits none of {options}")

    return convert


def _container_converter(tp: Any, origin: Any) -> Converter:
    args = typing.get_args(tp)
    kind = origin or tp
    if kind is dict:
        value_convert = converter_for(args[1]) if len(args) == 2 else _identity

        def convert_dict(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(tp, value)
            return {k: value_convert(v) for k, v in value.items()}

        return convert_dict
    item_convert = converter_for(args[0]) if args else _identity
    build: Callable[[Any], Any] = kind

    def convert_seq(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _mismatch(tp, value)
        return build(item_convert(item) for item in value)

    return convert_seq


def _dataclass_converter(cls: type) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [
        (f.name, converter_for(hints.get(f.name, Any)))
        for f in dataclasses.fields(cls)
        if f.init
    ]
    names = {name for name, _ in fields}

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _mismatch(cls, value)
        unknown = value.keys() - names
        if unknown:
            raise CodecError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        try:
            return cls(**{name: conv(value[name]) for name, conv in fields if name in value})
        except TypeError as exc:
            raise CodecError(f"cannot build {cls.__name__} from payload: {exc}") from exc

    return convert
