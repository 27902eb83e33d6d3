"""Avro binary writers compiled from our schemas: the bytes fastavro writes, in about half the time.

Why: the processor writes ~20 records per 5-step run (history events, step commands, the run's state, its
outcome), and fastavro's generic writer took 8-13 us per small record plus the dict built for it; under load
that was about a third of the processor's CPU (py-spy, ADR 0006/0007). A writer generated for one schema
does no per-field type dispatch and, for our frozen dataclasses, reads attributes instead of a dict.

Only writing is ours. Reading stays with fastavro, because it must resolve records written with older
schema versions. The unit tests compare these bytes with fastavro's for every record type and branch.
Supported: the types our schemas use (null, boolean, int, long, float, double, bytes, string, records,
arrays, maps, enums, unions of null and one type, unions of records); anything else fails at compile time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _zigzag_bytes(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = [_zigzag_bytes(n) for n in range(0, 64)]


def zigzag(n: int) -> bytes:
    """Avro's int/long: zig-zag, then base-128 varint (0-63 from a table: positions, attempts, lengths)."""
    if 0 <= n < 64:
        return _SMALL[n]
    return _zigzag_bytes(n)


_HELPERS: dict[str, Any] = {
    "_zz": zigzag,
    "_f32": struct.Struct("<f").pack,
    "_f64": struct.Struct("<d").pack,
}


class _Compiler:
    """Generates one Python function per named record, then executes the source once."""

    def __init__(self, attrs: bool) -> None:
        self.attrs = attrs
        self.functions: dict[str, str] = {}  # record full name -> function name
        self.schemas: dict[str, Any] = {}  # every named type seen, for references by name
        self.sources: list[str] = []
        self.constants: dict[str, Any] = {}
        self.temps = 0
        self.branch_tables: list[str] = []  # constants mapping a branch to (index bytes, function name)

    def compile(self, schema: dict[str, Any]) -> Callable[[bytearray, Any], None]:
        entry = self.record(schema, schema.get("namespace", ""))
        source = "\n".join(self.sources)
        scope: dict[str, Any] = {**_HELPERS, **self.constants}
        exec(compile(source, f"<avro writer {schema.get('name')}>", "exec"), scope)  # noqa: S102 - our schemas
        for name in self.branch_tables:  # the functions exist now: point the branch tables at them
            scope[name] = {key: (index, scope[fn]) for key, (index, fn) in scope[name].items()}
        write: Callable[[bytearray, Any], None] = scope[entry]
        return write

    # -- named types ----------------------------------------------------------------------------------------
    @staticmethod
    def _full_name(schema: dict[str, Any], namespace: str) -> tuple[str, str]:
        name = schema["name"]
        if "." in name:
            return name, name.rsplit(".", 1)[0]
        ns = schema.get("namespace", namespace)
        return (f"{ns}.{name}" if ns else name), ns

    def record(self, schema: dict[str, Any], namespace: str) -> str:
        full, ns = self._full_name(schema, namespace)
        if full in self.functions:
            return self.functions[full]
        fn = f"_w{len(self.functions)}"
        self.functions[full] = fn
        self.schemas[full] = schema
        body: list[str] = []
        for f in schema["fields"]:
            access = f"v.{f['name']}" if self.attrs else f"v[{f['name']!r}]"
            body += self.value(f["type"], access, ns, 1)
        self.sources += [f"def {fn}(out, v):", *(body or ["    pass"]), ""]
        return fn

    def _resolve(self, name: str, namespace: str) -> Any:
        for candidate in (name, f"{namespace}.{name}"):
            if candidate in self.schemas:
                return self.schemas[candidate]
        raise ValueError(f"unknown named type {name!r}")

    # -- values ---------------------------------------------------------------------------------------------
    def _temp(self) -> str:
        self.temps += 1
        return f"t{self.temps}"

    def value(self, t: Any, expr: str, ns: str, depth: int) -> list[str]:
        pad = "    " * depth
        if isinstance(t, list):
            return self.union(t, expr, ns, depth)
        if isinstance(t, str):
            if t in _PRIMITIVES:
                return self.primitive(t, expr, pad)
            t = self._resolve(t, ns)
        kind = t["type"]
        if kind in _PRIMITIVES:
            return self.primitive(kind, expr, pad)
        if kind == "record":
            return [f"{pad}{self.record(t, ns)}(out, {expr})"]
        if kind == "enum":
            full, _ = self._full_name(t, ns)
            self.schemas[full] = t
            table = self._constant({s: zigzag(i) for i, s in enumerate(t["symbols"])})
            return [f"{pad}out += {table}[{expr}]"]
        if kind == "array":
            items, item = self._temp(), self._temp()
            return [
                f"{pad}{items} = {expr}",
                f"{pad}if {items}:",
                f"{pad}    out += _zz(len({items}))",
                f"{pad}    for {item} in {items}:",
                *self.value(t["items"], item, ns, depth + 2),
                f"{pad}out += b'\\x00'",
            ]
        if kind == "map":  # one block of (string key, value) pairs, then a 0 count: as fastavro writes it
            pairs, key, item = self._temp(), self._temp(), self._temp()
            return [
                f"{pad}{pairs} = {expr}",
                f"{pad}if {pairs}:",
                f"{pad}    out += _zz(len({pairs}))",
                f"{pad}    for {key}, {item} in {pairs}.items():",
                *self.primitive("string", key, pad + "        "),
                *self.value(t["values"], item, ns, depth + 2),
                f"{pad}out += b'\\x00'",
            ]
        raise ValueError(f"Avro type {kind!r} is not supported by the compiled writer")

    @staticmethod
    def primitive(kind: str, expr: str, pad: str) -> list[str]:
        if kind == "null":
            return []
        if kind == "boolean":
            return [f"{pad}out += b'\\x01' if {expr} else b'\\x00'"]
        if kind in ("int", "long"):
            return [f"{pad}out += _zz({expr})"]
        if kind == "float":
            return [f"{pad}out += _f32({expr})"]
        if kind == "double":
            return [f"{pad}out += _f64({expr})"]
        if kind == "string":
            return [f"{pad}b = {expr}.encode()", f"{pad}out += _zz(len(b))", f"{pad}out += b"]
        return [f"{pad}b = {expr}", f"{pad}out += _zz(len(b))", f"{pad}out += b"]  # bytes

    def union(self, branches: list[Any], expr: str, ns: str, depth: int) -> list[str]:
        pad = "    " * depth
        value = self._temp()
        if len(branches) == 2 and "null" in branches:
            null_at = branches.index("null")
            other = branches[1 - null_at]
            return [
                f"{pad}{value} = {expr}",
                f"{pad}if {value} is None:",
                f"{pad}    out += {zigzag(null_at)!r}",
                f"{pad}else:",
                f"{pad}    out += {zigzag(1 - null_at)!r}",
                *self.value(other, value, ns, depth + 1),
            ]
        records = [b if isinstance(b, dict) else self._resolve(b, ns) for b in branches]
        if not all(isinstance(r, dict) and r.get("type") == "record" for r in records):
            raise ValueError("only unions of null and one type, or of records, are supported")
        table: dict[str, tuple[bytes, str]] = {}
        for i, r in enumerate(records):
            full, _ = self._full_name(r, ns)
            fn = self.record(r, ns)
            table[full] = table[full.rsplit(".", 1)[-1]] = (zigzag(i), fn)
        name = self._constant(table)
        self.branch_tables.append(name)
        # Attributes: a record dataclass, its branch found by its class name. Dicts: fastavro's tuple
        # notation, (record name, record dict).
        pick = f"type({value}).__name__" if self.attrs else f"{value}[0]"
        datum = value if self.attrs else f"{value}[1]"
        index, fn = self._temp(), self._temp()
        return [
            f"{pad}{value} = {expr}",
            f"{pad}{index}, {fn} = {name}[{pick}]",
            f"{pad}out += {index}",
            f"{pad}{fn}(out, {datum})",
        ]

    def _constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name


def compile_writer(schema: dict[str, Any], *, attrs: bool) -> Callable[[bytearray, Any], None]:
    """``write(out, value)``: appends one value of record ``schema`` (parsed JSON) to ``out`` as Avro binary.

    ``attrs``: values are objects whose attributes carry the fields (our frozen dataclasses); otherwise
    dicts, with fastavro's ``(name, record)`` tuples for unions of records.
    """
    return _Compiler(attrs).compile(schema)


def compile_encoder(schema: dict[str, Any], *, attrs: bool, prefix: bytes = b"") -> Callable[[Any], bytes]:
    """``encode(value) -> bytes``: ``prefix`` (e.g. the wire-format header), then the value's Avro binary."""
    write = compile_writer(schema, attrs=attrs)

    def encode(value: Any) -> bytes:
        out = bytearray(prefix)
        write(out, value)
        return bytes(out)

    return encode
