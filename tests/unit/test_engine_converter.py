"""Payload conversion: JSON via pydantic-core, guided by type hints, with a size limit at the edge."""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from orchestrator import App, PayloadError, PayloadTooLargeError, Settings
from orchestrator.converter import DataConverter, IdentityCodec, JsonConverter


@dataclass
class Item:
    sku: str
    qty: int


@dataclass
class Cart:
    items: list[Item]
    at: datetime


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    name: str
    tags: list[str] = []


conv = JsonConverter()


def test_plain_values() -> None:
    for value in [None, 1, 1.5, "é", True, [1, "a"], {"a": [1, None]}]:
        assert conv.from_payload(conv.to_payload(value)) == value


def test_dataclass_round_trip() -> None:
    data = conv.to_payload(Item("a", 2))
    assert data == b'{"sku":"a","qty":2}'
    assert conv.from_payload(data, Item) == Item("a", 2)
    assert conv.from_payload(data) == {"sku": "a", "qty": 2}  # no hint: plain JSON


def test_nested_dataclass_with_datetime() -> None:
    cart = Cart([Item("a", 1), Item("b", 2)], datetime(2024, 5, 1, 12, tzinfo=UTC))
    assert conv.from_payload(conv.to_payload(cart), Cart) == cart


def test_pydantic_model_round_trip() -> None:
    c = Customer(id=uuid.UUID(int=7), name="Ada", tags=["vip"])
    assert conv.from_payload(conv.to_payload(c), Customer) == c


def test_list_of_dataclasses() -> None:
    items = [Item("a", 1), Item("b", 2)]
    got = conv.from_payload(conv.to_payload(items), list[Item])
    assert got == items
    assert all(isinstance(i, Item) for i in got)


def test_tuple_hint_for_step_arguments() -> None:
    data = conv.to_payload(["a", Item("x", 1)])
    assert conv.from_payload(data, tuple[str, Item]) == ("a", Item("x", 1))


def test_any_hint_is_plain_json() -> None:
    assert conv.from_payload(b'{"a": 1}', Any) == {"a": 1}


def test_wrong_shape_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="does not decode as"):
        conv.from_payload(b'{"sku": "a"}', Item)


def test_unencodable_value_is_a_payload_error_with_advice() -> None:
    with pytest.raises(PayloadError, match="PayloadConverter"):
        conv.to_payload(object())


def test_data_converter_applies_the_codec() -> None:
    class Zlib:
        def encode(self, data: bytes) -> bytes:
            return zlib.compress(data)

        def decode(self, data: bytes) -> bytes:
            return zlib.decompress(data)

    dc = DataConverter(codec=Zlib(), max_payload_bytes=200)
    big = "x" * 10_000  # compresses far below the limit: the limit applies to the encoded bytes
    data = dc.encode(big)
    assert len(data) < 200
    assert dc.decode(data, str) == big


def test_identity_codec() -> None:
    assert IdentityCodec().encode(b"abc") == b"abc" == IdentityCodec().decode(b"abc")


def test_payload_too_large_is_actionable() -> None:
    dc = DataConverter(max_payload_bytes=100)
    dc.encode("x" * 90)  # 92 bytes with the quotes: fine
    with pytest.raises(PayloadTooLargeError) as info:
        dc.encode("x" * 200, what="arguments of step 'upload'")
    msg = str(info.value)
    assert "arguments of step 'upload'" in msg
    assert "202 bytes" in msg and "limit of 100" in msg
    assert "ORCHESTRATOR_MAX_PAYLOAD_BYTES" in msg
    assert "reference" in msg


def test_app_limit_comes_from_settings() -> None:
    app = App("conv-test", settings=Settings(max_payload_bytes=64))
    with pytest.raises(PayloadTooLargeError):
        app.data.encode(list(range(100)))


def test_custom_converter_is_used() -> None:
    class Upper:
        def to_payload(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def from_payload(self, data: bytes, type_hint: Any = None) -> Any:
            return data.decode().lower()

    app = App("conv-test", converter=Upper())
    assert app.data.encode("abc") == b"ABC"
    assert app.data.decode(b"ABC") == "abc"
