"""Payload encoding and typed decoding."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxqueue import CodecError, JsonCodec
from rxqueue.codec import converter_for

codec = JsonCodec()

json_values = st.recursive(
    st.none()
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
