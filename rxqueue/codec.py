"""Payload codecs and typed decoding.

A :class:`Codec` turns payloads into bytes and back. The default,
:class:`JsonCodec`, uses orjson: dataclasses, dicts, lists, str/int/float/
bool/None, datetimes and UUIDs encode natively. NaN and ±Infinity are refused
with a :class:`CodecError` naming where they are: JSON cannot hold them and
orjson would store ``null`` instead. On the way back the worker converts the
decoded JSON into the type annotated on the handler's first parameter with
:func:`converter_for`, built once per type at build time.

How a class annotation is built from a decoded JSON value, first match wins:

1. **Models**: a class with a callable ``model_validate`` classmethod (pydantic
   v2 style; duck-typed, pydantic is not imported) gets ``tp.model_validate(value)``.
   Whatever it raises becomes a :class:`CodecError` naming the class.
2. **Dataclasses**: the value must be an object whose keys are the init fields;
   each field is converted by its annotation (nested dataclasses included).
3. **TypedDicts**: the value must be an object with every required key and no
   unknown key; each value is converted by its annotation; the result is a
   plain ``dict``.
4. **Plain classes** (any other class not from :mod:`builtins`): an instance
   passes as is; an object is passed as keyword arguments, ``tp(**value)``, its
   values as decoded JSON; a ``TypeError``/``ValueError`` from the constructor
   becomes a :class:`CodecError`. Anything else is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import types
import typing
import uuid
from collections.abc import Callable, Sequence
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
            data = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise CodecError(
                f"cannot encode payload of type {type(value).__name__}: {exc}. "
                "Payloads must be dataclasses, dicts, lists, str, int, float, bool, "
                "None, datetimes or UUIDs; convert other objects first or pass a "
                "custom codec=."
            ) from exc
        # orjson writes NaN/±Inf as null; only output holding "null" can hide one,
        # so the common payload pays one substring search and no walk.
        if b"null" in data:
            found = _non_finite(value, "")
            if found is not None:
                number, where = found
                raise CodecError(
                    f"payload contains {_json_name(number)} at {where or 'the top level'}; "
                    "JSON cannot represent NaN or Infinity: send None or a string"
                )
        return data

    def decode(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            preview = bytes(data[:40])
            raise CodecError(f"payload is not valid JSON ({exc}); starts with {preview!r}") from exc


DEFAULT_CODEC = JsonCodec()


def encode_list(codec: Codec, items: Sequence[bytes | None]) -> bytes:
    """The list of already-encoded ``items`` (``None``: no value), encoded.

    A waiting task's payload once its dependencies are Done: stores build it from
    their stored results. JSON documents join as they are; other codecs decode
    each item and encode the list.
    """
    if type(codec) is JsonCodec:
        return b"[" + b",".join(b"null" if item is None else item for item in items) + b"]"
    return codec.encode([None if item is None else codec.decode(item) for item in items])


def _json_name(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def _non_finite(value: Any, path: str) -> tuple[float, str] | None:
    """The first NaN/±Inf in what orjson serialised from ``value``, and its path.

    Recursion is bounded: orjson refuses nesting deeper than 255 before we get here.
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else (value, path)
    if isinstance(value, str | int | bytes | None):  # the common leaves, and no walk
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}[{key!r}]"
            # OPT_NON_STR_KEYS writes a NaN/Inf key as "null": refuse it too.
            if isinstance(key, float) and not math.isfinite(key):
                return (key, where)
            found = _non_finite(item, where)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(value, enum.Enum):  # orjson writes an enum member as its value
        return _non_finite(value.value, path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _non_finite_attributes(value, path)
    return None


def _non_finite_attributes(instance: Any, path: str) -> tuple[float, str] | None:
    # As orjson does: __dict__ when there is one, else the fields; "_" names are skipped.
    attributes = getattr(instance, "__dict__", None)
    if not isinstance(attributes, dict):
        attributes = {f.name: getattr(instance, f.name, None) for f in dataclasses.fields(instance)}
    for name, item in attributes.items():
        if name.startswith("_"):
            continue
        found = _non_finite(item, f"{path}.{name}")
        if found is not None:
            return found
    return None


def identity(value: Any) -> Any:
    return value


def converter_for(tp: Any) -> Converter:
    """Build a function that converts decoded JSON into ``tp``.

    Supports models with ``model_validate``, dataclasses, TypedDicts and plain
    classes (in that order; see the module docstring), all nestable;
    ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``X | None`` and other
    unions, datetime, date, UUID and the JSON scalars. ``Any`` (or no
    annotation) passes values through. Raises :class:`CodecError` at conversion
    time when a value does not fit.
    """
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return identity
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return converter_for(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return _union_converter(typing.get_args(tp))
    if origin in (list, tuple, set, frozenset, dict) or tp in (list, dict, tuple):
        return _container_converter(tp, origin)
    if isinstance(tp, type) and callable(getattr(tp, "model_validate", None)):
        return _model_converter(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_converter(tp)
    if _is_typeddict(tp):
        return _typeddict_converter(tp)
    if tp is datetime:
        return _parsing(datetime, datetime.fromisoformat)
    if tp is date:
        return _parsing(date, date.fromisoformat)
    if tp is uuid.UUID:
        return _parsing(uuid.UUID, uuid.UUID)
    if tp is float:
        return _scalar(float, (int, float), float)
    if tp in (str, int, bool, type(None)):
        return _scalar(tp, (tp,), identity)
    if isinstance(tp, type) and tp.__module__ != "builtins" and not issubclass(tp, enum.Enum):
        return _class_converter(tp)
    if isinstance(tp, type):
        return _scalar(tp, (tp,), identity)
    return identity


def _is_typeddict(tp: Any) -> bool:
    # Duck-typed too, so typing_extensions.TypedDict (unknown to typing's check) counts.
    return typing.is_typeddict(tp) or (
        isinstance(tp, type)
        and issubclass(tp, dict)
        and hasattr(tp, "__required_keys__")
        and hasattr(tp, "__total__")
    )


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
    allows_none = type(None) in options
    converters = [converter_for(option) for option in options if option is not type(None)]

    def convert(value: Any) -> Any:
        if value is None and allows_none:
            return None
        if len(converters) == 1:  # X | None: X's own error names the problem
            return converters[0](value)
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
        value_convert = converter_for(args[1]) if len(args) == 2 else identity

        def convert_dict(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _mismatch(tp, value)
            return {k: value_convert(v) for k, v in value.items()}

        return convert_dict
    item_convert = converter_for(args[0]) if args else identity
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


def _model_converter(cls: type) -> Converter:
    validate: Callable[[Any], Any] = getattr(cls, "model_validate")  # noqa: B009

    def convert(value: Any) -> Any:
        try:
            return validate(value)
        except Exception as exc:  # the model's own validation error, whatever its type
            raise CodecError(
                f"cannot build {cls.__name__} from payload: {cls.__name__}.model_validate "
                f"raised {type(exc).__name__}: {exc}"
            ) from exc

    return convert


# Key qualifiers to strip before converting; ReadOnly is new in Python 3.13.
_KEY_MARKERS = (typing.Required, typing.NotRequired, getattr(typing, "ReadOnly", typing.Required))


def _typeddict_converter(cls: type) -> Converter:
    hints = typing.get_type_hints(cls, include_extras=True)
    required = set(getattr(cls, "__required_keys__", ()))
    fields: dict[str, Converter] = {}
    for key, hint in hints.items():
        # Required[]/NotRequired[] decide for themselves: under `from __future__ import
        # annotations` Python 3.11 files every key by the class's total= alone.
        while typing.get_origin(hint) in _KEY_MARKERS:
            marker = typing.get_origin(hint)
            hint = typing.get_args(hint)[0]
            if marker is typing.Required:
                required.add(key)
            elif marker is typing.NotRequired:
                required.discard(key)
        fields[key] = converter_for(hint)

    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _mismatch(cls, value)
        missing = required - value.keys()
        if missing:
            raise CodecError(f"{cls.__name__} is missing required key(s) {sorted(missing)}")
        unknown = value.keys() - fields.keys()
        if unknown:
            raise CodecError(f"{cls.__name__} has no key(s) {sorted(unknown, key=str)}")
        return {key: fields[key](item) for key, item in value.items()}

    return convert


def _class_converter(cls: type) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise CodecError(
                f"payload value {value!r:.60} ({type(value).__name__}) does not fit "
                f"{cls.__name__}: it is built from a JSON object of its keyword arguments"
            )
        try:
            return cls(**value)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"cannot build {cls.__name__} from payload: {exc}") from exc

    return convert
