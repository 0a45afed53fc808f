"""Payload encoding and typed decoding."""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NotRequired, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxqueue import CodecError, JsonCodec
from rxqueue.codec import converter_for

codec = JsonCodec()

json_values = st.recursive(
    st.none()
    | st.just("null")  # text that looks like the null the NaN check searches for
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    assert codec.decode(codec.encode(value)) == value


@dataclass
class Address:
    city: str
    zip: str | None = None


@dataclass
class Signup:
    user_id: uuid.UUID
    email: str
    at: datetime
    birthday: date | None
    tags: list[str] = field(default_factory=list)
    address: Address | None = None
    scores: dict[str, float] = field(default_factory=dict)


@given(
    user_id=st.uuids(),
    email=st.emails(),
    at=st.datetimes(timezones=st.just(UTC)),
    birthday=st.none() | st.dates(),
    tags=st.lists(st.text(max_size=5), max_size=3),
    city=st.text(max_size=10),
    scores=st.dictionaries(
        st.text(max_size=3), st.floats(allow_nan=False, allow_infinity=False), max_size=3
    ),
)
def test_dataclasses_come_back_as_dataclasses(
    user_id: uuid.UUID,
    email: str,
    at: datetime,
    birthday: date | None,
    tags: list[str],
    city: str,
    scores: dict[str, float],
) -> None:
    original = Signup(user_id, email, at, birthday, tags, Address(city), scores)
    decoded = converter_for(Signup)(codec.decode(codec.encode(original)))
    assert decoded == original
    assert isinstance(decoded.address, Address)


def test_ints_pass_as_floats_but_bools_do_not_pass_as_numbers() -> None:
    assert converter_for(float)(3) == 3.0
    with pytest.raises(CodecError, match="does not fit int"):
        converter_for(int)(True)
    with pytest.raises(CodecError, match="does not fit bool"):
        converter_for(bool)(1)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"city": 5}, "does not fit str"),
        ({"city": "x", "country": "y"}, r"has no field\(s\) \['country'\]"),
        ({}, "cannot build Address"),
        ([1, 2], "does not fit Address"),
    ],
)
def test_payloads_that_do_not_fit_name_the_problem(payload: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        converter_for(Address)(payload)


def test_encoding_errors_say_what_payloads_may_be() -> None:
    with pytest.raises(CodecError, match=r"cannot encode payload of type set.*dataclasses, dicts"):
        codec.encode({1, 2})


def test_garbage_bytes_are_a_codec_error() -> None:
    with pytest.raises(CodecError, match="not valid JSON"):
        codec.decode(b"\xff\x00garbage")


def test_untyped_and_any_pass_through() -> None:
    value = {"a": [1, 2]}
    assert converter_for(Any)(value) is value
    assert asdict(converter_for(Address)({"city": "Oslo"})) == {"city": "Oslo", "zip": None}


# --- NaN and Infinity ------------------------------------------------------------------


@dataclass
class Price:
    amount: float
    _cache: float = math.nan  # orjson skips "_" attributes, so this one is never written


class Ratio(float, enum.Enum):
    UNKNOWN = math.nan


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"items": [{"price": 1.0}, {"price": 2.0}, {"price": math.nan}]},
            r"payload contains NaN at \['items'\]\[2\]\['price'\]",
        ),
        (math.inf, "payload contains Infinity at the top level"),
        ((1.0, -math.inf), r"payload contains -Infinity at \[1\]"),
        ({"lines": [Price(math.inf)]}, r"Infinity at \['lines'\]\[0\]\.amount"),
        ({math.nan: "key"}, r"NaN at \[nan\]"),  # OPT_NON_STR_KEYS would write "null"
        ({"ratio": Ratio.UNKNOWN}, r"NaN at \['ratio'\]"),
    ],
)
def test_non_finite_floats_are_refused_naming_where_they_are(payload: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message) as caught:
        codec.encode(payload)
    assert "JSON cannot represent NaN or Infinity: send None or a string" in str(caught.value)


def test_null_and_underscore_attributes_are_not_mistaken_for_nan() -> None:
    assert codec.decode(codec.encode({"a": None, "b": "null", "c": Price(1.5)})) == {
        "a": None,
        "b": "null",
        "c": {"amount": 1.5},
    }


def _insert(siblings: list[Any], bad: Any, index: int) -> list[Any]:
    return [*siblings[:index], bad, *siblings[index:]]


# A JSON-able value with exactly one NaN/±Inf at a drawn place, nested in lists and dicts.
tainted_values = st.recursive(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    lambda bad: (
        st.builds(_insert, st.lists(json_values, max_size=3), bad, st.integers(0, 3))
        | st.builds(
            lambda siblings, key, child: {**siblings, key: child},
            st.dictionaries(st.text(max_size=3), json_values, max_size=3),
            st.text(max_size=3),
            bad,
        )
    ),
    max_leaves=6,
)


@given(tainted_values)
def test_any_value_holding_nan_or_infinity_is_refused_with_a_path_to_it(value: Any) -> None:
    with pytest.raises(CodecError, match="JSON cannot represent NaN or Infinity") as caught:
        codec.encode(value)
    where = str(caught.value).split(" at ", 1)[1].rsplit("; JSON cannot", 1)[0]
    found = value if where == "the top level" else eval(f"value{where}")  # keys are repr()s
    assert isinstance(found, float)
    assert not math.isfinite(found)


# --- typed payloads: TypedDicts, plain classes, models ---------------------------------


class Line(TypedDict):
    sku: str
    at: datetime
    note: NotRequired[str]


class Extras(TypedDict, total=False):
    gift: bool


@dataclass
class Order:
    id: int
    line: Line
    extras: Extras | None = None


class Point:
    def __init__(self, x: int, y: int) -> None:
        if x < 0:
            raise ValueError("x must be >= 0")
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


class Model:
    """Stands in for a pydantic v2 model: only model_validate builds one."""

    def __init__(self, sku: str) -> None:
        self.sku = sku

    @classmethod
    def model_validate(cls, value: Any) -> Model:
        if not isinstance(value, dict) or not isinstance(value.get("sku"), str):
            raise ValueError("sku: a string is required")
        return cls(value["sku"].upper())


@dataclass
class ValidatedDataclass:
    sku: str

    @classmethod
    def model_validate(cls, value: Any) -> ValidatedDataclass:
        return cls(sku=f"validated {value['sku']}")


def test_typeddict_payloads_become_plain_dicts_with_converted_values() -> None:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    line = converter_for(Line)(codec.decode(codec.encode({"sku": "a-1", "at": at})))
    assert line == {"sku": "a-1", "at": at}
    assert type(line) is dict
    assert converter_for(Extras)({}) == {}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"at": "2024-05-01T12:00:00"}, r"Line is missing required key\(s\) \['sku'\]"),
        ({"sku": "a", "at": "2024-05-01", "qty": 1}, r"Line has no key\(s\) \['qty'\]"),
        ({"sku": 5, "at": "2024-05-01"}, "does not fit str"),
        (["a-1"], "does not fit Line"),
    ],
)
def test_typeddict_payloads_that_do_not_fit_name_the_key(payload: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        converter_for(Line)(payload)


def test_a_dataclass_field_may_be_a_typeddict() -> None:
    order = converter_for(Order)(
        {"id": 7, "line": {"sku": "b", "at": "2024-05-01T00:00:00"}, "extras": {"gift": True}}
    )
    assert order == Order(7, {"sku": "b", "at": datetime(2024, 5, 1)}, {"gift": True})
    with pytest.raises(CodecError, match=r"Extras has no key\(s\) \['wrap'\]"):
        converter_for(Order)(
            {"id": 7, "line": {"sku": "b", "at": "2024-05-01"}, "extras": {"wrap": 1}}
        )


def test_plain_classes_are_built_from_keyword_arguments() -> None:
    points = converter_for(list[Point])([{"x": 1, "y": 2}, Point(3, 4)])
    assert points == [Point(1, 2), Point(3, 4)]
    assert all(type(point) is Point for point in points)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"x": 1}, r"cannot build Point from payload: .*missing 1 required .*'y'"),
        ({"x": -1, "y": 0}, "cannot build Point from payload: x must be >= 0"),
        ([1, 2], r"does not fit Point: it is built from a JSON object of its keyword"),
    ],
)
def test_plain_class_payloads_that_do_not_fit_name_the_class(payload: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        converter_for(Point)(payload)


def test_model_validate_builds_models_and_its_errors_become_codec_errors() -> None:
    model = converter_for(Model)({"sku": "abc"})
    assert isinstance(model, Model)
    assert model.sku == "ABC"
    with pytest.raises(CodecError, match=r"cannot build Model.*ValueError: sku: a string"):
        converter_for(Model)({"sku": 1})
    with pytest.raises(CodecError, match="cannot build Model"):
        converter_for(list[Model])([{"sku": "a"}, "not an object"])


def test_model_validate_comes_before_the_dataclass_rule() -> None:
    assert converter_for(ValidatedDataclass)({"sku": "x"}) == ValidatedDataclass("validated x")


def test_builtin_and_stdlib_scalars_keep_their_rules() -> None:
    with pytest.raises(CodecError, match="does not fit bytes"):
        converter_for(bytes)({"x": 1})
    assert converter_for(uuid.UUID)(str(uuid.UUID(int=1))) == uuid.UUID(int=1)
