"""Enforces the evolution rules of ``schemas/README.md`` on whatever ``schemas/registry.json`` lists.

Nothing here names a version: when ``event-v2.avsc`` is registered, every record shape of every older
version of ``orchestrator.v1.Event`` is written with the old schema and read with the current one.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
PROMOTIONS = {("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double")}
PROMOTIONS |= {("float", "double"), ("string", "bytes"), ("bytes", "string")}

# Rule 1 ("an id is frozen"): the Avro parsing canonical form of every released id never changes (docs may).
FROZEN = {
    1: "71dfc60165c0ca9789c9e4a54a0cb8c2cd5a0eeda208b95c82dcb878903fa65d",
    2: "b4d3fcdf1735aa79c72bfc36f52cf87ae57921cfa3c0a7c2eddaf04fc1de4732",
    3: "f2b94c2811b7ac59ed5bf69de5e0873a3bfc55452f67d09a02272f0a44b0d54a",
    4: "dc3fa09486faa76c62848a3fbe97d716667810be87ffa6a4521f9ae8cf6b45aa",
    5: "2b655439f60719a392e72bbd595bbf7bbc1baaad5ccbd0bda9be4c922d3b8a73",
    6: "b7ea039ea15b91a115cbb4a21c91d1d9a353eb6991e60c7c4f019cde299e0c49",
    7: "2c1850cff95cb5722f11ec036532e34ca4b4e05c4510e016836a703291fcbaa2",
    8: "ee3797dc62f57bf4d7ae3d67eb9afe9eaed969aea4ec805a11d7a2e8e29b36b1",
    9: "20188894068bc482b12fdca6824243ab501e9b34218389d2557592ceabe8a23f",
    10: "417361259b3991023fb1b40b98f3aaf7b053a7a84653e9e9f3f85d0bdd35b3b0",
    11: "9929626b8de6064da0590ad1ba18f2dcda09d899928c394842305bf775093ee7",
    12: "c6e0b6d51db48a1eaebcd95e5fe23fbec0a23dddd77ff4c829e5c88c36c58e63",
    13: "e11c75e7f5d994cce035f4134411e438b1159e142386bbf434e140f474d3601e",
}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, f"registry.json repeats keys {sorted(dupes)} (JSON keeps only the last one)"
    return dict(pairs)


REGISTRY = json.loads((SCHEMAS / "registry.json").read_text(), object_pairs_hook=_no_duplicate_keys)
IDS = sorted(int(sid) for sid in REGISTRY["schemas"])


def _raw(sid: int) -> Any:
    return json.loads((SCHEMAS / REGISTRY["schemas"][str(sid)]["file"]).read_text())


def _full_name(schema: dict[str, Any]) -> str:
    name = schema["name"]
    return name if "." in name else f"{schema.get('namespace', '')}.{name}".lstrip(".")


def _versions() -> list[tuple[str, int, int]]:
    """(name, older id, current id) for every registered id that is not its name's current one."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for sid in IDS:
        by_name[REGISTRY["schemas"][str(sid)]["name"]].append(sid)
    out = []
    for name, sids in sorted(by_name.items()):
        current = REGISTRY["current"][name]
        out += [(name, sid, current) for sid in sids if sid != current]
    return out


# -- sample records covering every union branch --------------------------------------------------------------
class _Samples:
    """Records for a schema: the i-th sample takes branch ``i % len(branches)`` of every union."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, Any] = {}
        self.full_names: dict[int, str] = {}
        self.schema = schema
        self.widest = 1
        self._scan(schema, "")

    def _scan(self, s: Any, ns: str) -> None:
        if isinstance(s, list):
            self.widest = max(self.widest, len(s))
            for branch in s:
                self._scan(branch, ns)
        elif isinstance(s, dict):
            t = s["type"]
            if t in ("record", "error", "enum", "fixed"):
                ns = s.get("namespace", ns) if "." not in s["name"] else s["name"].rsplit(".", 1)[0]
                full = f"{ns}.{s['name'].rsplit('.', 1)[-1]}".lstrip(".")
                self.named[s["name"].rsplit(".", 1)[-1]] = s
                self.named[full] = s
                self.full_names[id(s)] = full
            if t in ("record", "error"):
                for f in s["fields"]:
                    self._scan(f["type"], ns)
            elif t == "array":
                self._scan(s["items"], ns)
            elif t == "map":
                self._scan(s["values"], ns)
            if t == "enum":
                self.widest = max(self.widest, len(s["symbols"]))

    def all(self) -> list[Any]:
        return [self._value(self.schema, i) for i in range(self.widest)]

    def _value(self, s: Any, i: int) -> Any:
        if isinstance(s, list):  # name the branch, as the Avro JSON encoding does: no ambiguity
            branch = s[i % len(s)]
            target = self.named.get(branch) if isinstance(branch, str) else branch
            if isinstance(target, dict) and id(target) in self.full_names:
                return (self.full_names[id(target)], self._value(target, i))
            return self._value(branch, i)
        if isinstance(s, str):
            if s in PRIMITIVES:
                return {
                    "null": None,
                    "boolean": i % 2 == 0,
                    "int": -7 - i,
                    "long": 2**40 + i,
                    "float": 1.5,
                    "double": 2.25,
                    "bytes": b"\x00\xff" + bytes([i]),
                    "string": f"s{i}-é",
                }[s]
            return self._value(self.named[s], i)
        t = s["type"]
        if t in PRIMITIVES:
            return self._value(t, i)
        if t in ("record", "error"):
            return {f["name"]: self._value(f["type"], i) for f in s["fields"]}
        if t == "array":
            return [self._value(s["items"], i), self._value(s["items"], i + 1)]
        if t == "map":
            return {"k": self._value(s["values"], i)}
        if t == "enum":
            return s["symbols"][i % len(s["symbols"])]
        if t == "fixed":
            return bytes(s["size"])
        raise AssertionError(f"sample generator does not know {t!r}")


def _parse(raw: Any) -> Any:
    return fastavro.parse_schema(raw, named_schemas={})


def _write(raw: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _parse(raw), record)
    return buf.getvalue()


def _read(writer: Any, reader: Any, data: bytes) -> Any:
    return fastavro.schemaless_reader(
        io.BytesIO(data), _parse(writer), _parse(reader), return_record_name=True
    )


# -- static checks of new fields and types -------------------------------------------------------------------
def _records(s: Any, out: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    out = {} if out is None else out
    if isinstance(s, list):
        for b in s:
            _records(b, out)
    elif isinstance(s, dict):
        if s["type"] in ("record", "error"):
            out[s["name"].rsplit(".", 1)[-1]] = s
            for f in s["fields"]:
                _records(f["type"], out)
        elif s["type"] == "array":
            _records(s["items"], out)
        elif s["type"] == "map":
            _records(s["values"], out)
    return out


def evolution_problems(old: Any, new: Any) -> list[str]:
    """What in ``new`` breaks reading records written with ``old`` (empty when compatible)."""
    problems: list[str] = []
    old_recs, new_recs = _records(old), _records(new)
    for rec_name, old_rec in old_recs.items():
        new_rec = new_recs.get(rec_name)
        if new_rec is None:
            if not any(rec_name in (a.get("aliases") or []) for a in new_recs.values()):
                problems.append(
                    f"record {rec_name} was removed or renamed (union branches may only be added)"
                )
            continue
        old_fields = {f["name"]: f for f in old_rec["fields"]}
        for f in new_rec["fields"]:
            names = {f["name"], *(f.get("aliases") or [])}
            if not names & set(old_fields) and "default" not in f:
                problems.append(f"{rec_name}.{f['name']} is new and has no default")
        # A field the new reader drops is skipped by resolution: removing one never breaks reading.
    for i, record in enumerate(_Samples(old).all()):
        try:
            _read(old, new, _write(old, record))
        except Exception as exc:
            problems.append(f"sample {i} written with the old schema is not readable with the new: {exc}")
    return problems


# -- the registry itself -------------------------------------------------------------------------------------
def test_every_registered_id_has_its_file_and_name() -> None:
    for sid in IDS:
        entry = REGISTRY["schemas"][str(sid)]
        path = SCHEMAS / entry["file"]
        assert path.is_file(), f"schema id {sid}: {entry['file']} is missing"
        assert _full_name(_raw(sid)) == entry["name"], f"id {sid}: file declares another name"
        _parse(_raw(sid))  # valid Avro


def test_ids_are_positive_ints_and_files_unique() -> None:
    assert all(0 < sid < 2**31 for sid in IDS)
    files = [REGISTRY["schemas"][str(sid)]["file"] for sid in IDS]
    assert len(files) == len(set(files)), "two ids share a file"


def test_every_schema_file_is_registered() -> None:
    registered = {REGISTRY["schemas"][str(sid)]["file"] for sid in IDS}
    on_disk = {p.name for p in SCHEMAS.glob("*.avsc")}
    assert on_disk <= registered, f"unregistered schema files: {sorted(on_disk - registered)}"


def test_current_points_to_existing_ids_of_that_name() -> None:
    names = {REGISTRY["schemas"][str(sid)]["name"] for sid in IDS}
    assert set(REGISTRY["current"]) == names, "every schema name needs exactly one current id"
    for name, sid in REGISTRY["current"].items():
        assert str(sid) in REGISTRY["schemas"], f"current {name} -> unknown id {sid}"
        assert REGISTRY["schemas"][str(sid)]["name"] == name


def test_current_is_the_newest_id_of_its_name() -> None:
    for name, sid in REGISTRY["current"].items():
        same = [s for s in IDS if REGISTRY["schemas"][str(s)]["name"] == name]
        assert sid == max(same), f"{name}: current id {sid} is older than {max(same)}"


@pytest.mark.parametrize("sid", sorted(FROZEN))
def test_released_ids_are_frozen(sid: int) -> None:
    assert sid in IDS, f"schema id {sid} was removed from the registry; ids are forever"
    got = fingerprint(to_parsing_canonical_form(_raw(sid)), "SHA-256")
    assert got == FROZEN[sid], (
        f"schema id {sid} ({REGISTRY['schemas'][str(sid)]['file']}) changed in place: add a new file and id"
    )


# -- every older version readable by the current one ---------------------------------------------------------
@pytest.mark.parametrize("sid", IDS)
def test_each_version_reads_its_own_records(sid: int) -> None:
    raw = _raw(sid)
    samples = _Samples(raw).all()
    assert samples
    for record in samples:
        assert _read(raw, raw, _write(raw, record)) == record


@pytest.mark.parametrize(
    ("name", "old", "current"), _versions() or [pytest.param("", 0, 0, marks=pytest.mark.skip("one version"))]
)
def test_current_reads_every_older_version(name: str, old: int, current: int) -> None:
    problems = evolution_problems(_raw(old), _raw(current))
    assert not problems, f"{name}: id {current} cannot read id {old}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "old", "current"), _versions() or [pytest.param("", 0, 0, marks=pytest.mark.skip("one version"))]
)
def test_old_records_get_new_field_defaults(name: str, old: int, current: int) -> None:
    new_top = {f["name"]: f for f in _raw(current)["fields"]}
    old_names = {f["name"] for f in _raw(old)["fields"]}
    for record in _Samples(_raw(old)).all():
        got = _read(_raw(old), _raw(current), _write(_raw(old), record))
        for fname, field in new_top.items():
            if fname not in old_names:
                assert got[fname] == field["default"]


# -- the checker itself catches what the rules forbid --------------------------------------------------------
_V1 = {
    "type": "record",
    "name": "Thing",
    "namespace": "t.v1",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "n", "type": "int"},
        {
            "name": "body",
            "type": [
                {"type": "record", "name": "A", "fields": [{"name": "x", "type": "int"}]},
                {"type": "record", "name": "B", "fields": [{"name": "y", "type": "string"}]},
            ],
        },
    ],
}


def test_checker_accepts_compatible_changes() -> None:
    def add_defaulted_field(s: dict[str, Any]) -> None:
        s["fields"].append({"name": "extra", "type": "string", "default": ""})

    def promote(s: dict[str, Any]) -> None:
        s["fields"][1]["type"] = "long"

    def add_branch(s: dict[str, Any]) -> None:
        s["fields"][2]["type"].append({"type": "record", "name": "C", "fields": []})

    def add_defaulted_field_to_branch(s: dict[str, Any]) -> None:
        s["fields"][2]["type"][0]["fields"].append({"name": "z", "type": "long", "default": 0})

    new = json.loads(json.dumps(_V1))
    for change in (add_defaulted_field, promote, add_branch, add_defaulted_field_to_branch):
        change(new)
    assert evolution_problems(_V1, new) == []
    assert evolution_problems(_V1, _V1) == []


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda s: s["fields"].append({"name": "extra", "type": "string"}), "no default"),
        (lambda s: s["fields"][2]["type"].pop(1), "removed"),
        (lambda s: s["fields"][1].update(type="string"), "not readable"),
        (lambda s: s["fields"][2]["type"][0]["fields"].append({"name": "z", "type": "int"}), "no default"),
        (lambda s: s["fields"][2]["type"][1].update(name="Renamed"), "removed or renamed"),
    ],
    ids=["new-field-without-default", "removed-branch", "type-change", "branch-field-no-default", "rename"],
)
def test_checker_rejects_breaking_changes(change: Any, expect: str) -> None:
    new = json.loads(json.dumps(_V1))
    change(new)
    problems = evolution_problems(_V1, new)
    assert any(expect in p for p in problems), problems


def test_samples_cover_every_event_body_branch() -> None:
    event_id = REGISTRY["current"]["orchestrator.v1.Event"]
    raw = _raw(event_id)
    branches = {b["name"] for b in next(f for f in raw["fields"] if f["name"] == "body")["type"]}
    seen = set()
    for record in _Samples(raw).all():
        data = _write(raw, record)
        got = fastavro.schemaless_reader(io.BytesIO(data), _parse(raw), None, return_record_name=True)
        seen.add(got["body"][0].rsplit(".", 1)[-1])
    assert seen == branches
