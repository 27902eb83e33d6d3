"""Payloads: user values to bytes and back.

Two layers, as in Temporal's SDK: a `PayloadConverter` turns objects into bytes (JSON by default, guided by
type hints on the way back), and a `PayloadCodec` transforms bytes into bytes (compression, encryption).
Both are pluggable on the `App`. The default JSON converter handles JSON-able values, dataclasses and
pydantic models; decoding uses the annotation of the step's return value or the workflow's parameter, so a
workflow receives the same type it was given.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Protocol

import pydantic_core
from pydantic import TypeAdapter

from orchestrator.errors import PayloadError


class PayloadConverter(Protocol):
    def to_payload(self, value: Any) -> bytes: ...

    def from_payload(self, data: bytes, type_hint: Any = None) -> Any: ...


class PayloadCodec(Protocol):
    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


@lru_cache(maxsize=1024)
def _adapter(type_hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(type_hint)


class JsonConverter:
    """JSON via pydantic-core: fast, and it knows dataclasses, pydantic models, datetimes, UUIDs, sets."""

    def to_payload(self, value: Any) -> bytes:
        try:
            return pydantic_core.to_json(value)
        except pydantic_core.PydanticSerializationError as exc:
            raise PayloadError(
                f"cannot encode a {type(value).__name__} as JSON: {exc}. Use JSON-able values, dataclasses "
                "or pydantic models, or give the App a custom PayloadConverter."
            ) from exc

    def from_payload(self, data: bytes, type_hint: Any = None) -> Any:
        if type_hint is None or type_hint is Any:
            return json.loads(data)
        try:
            return _adapter(type_hint).validate_json(data)
        except (pydantic_core.ValidationError, TypeError) as exc:
            raise PayloadError(f"payload does not decode as {type_hint!r}: {exc}") from exc


class IdentityCodec:
    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> bytes:
        return data


class DataConverter:
    """The converter and codec together, with the payload size limit enforced at the edge."""

    def __init__(
        self,
        converter: PayloadConverter | None = None,
        codec: PayloadCodec | None = None,
        max_payload_bytes: int = 512 * 1024,
    ) -> None:
        self.converter = converter or JsonConverter()
        self.codec = codec or IdentityCodec()
        self.max_payload_bytes = max_payload_bytes

    def encode(self, value: Any, what: str = "payload") -> bytes:
        from orchestrator.errors import PayloadTooLargeError

        data = self.codec.encode(self.converter.to_payload(value))
        if len(data) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{what} is {len(data)} bytes, over the limit of {self.max_payload_bytes} "
                "(ORCHESTRATOR_MAX_PAYLOAD_BYTES). Store large data elsewhere and pass a reference."
            )
        return data

    def decode(self, data: bytes, type_hint: Any = None) -> Any:
        return self.converter.from_payload(self.codec.decode(data), type_hint)
