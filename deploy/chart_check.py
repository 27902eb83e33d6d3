"""Offline checks of the manifests `helm template` renders from deploy/helm/kafka-orchestrator.

`deploy/check-chart` calls ``validate`` on every rendered values file. No cluster and no network:

- Kubernetes kinds are checked against the schemas bundled with ``kubernetes-validate``, in strict mode
  (a field the API server does not know, such as a misspelt ``readinesProbe``, fails), for every
  Kubernetes version named, so the chart's oldest and newest supported versions are both covered.
- Custom resources (KEDA, Prometheus Operator, Strimzi) are checked against the ``openAPIV3Schema`` of
  their CRD, kept as JSON under ``deploy/crd-schemas`` (``extract-crds`` writes them from the upstream
  CRD files; ``deploy/crd-schemas/README.md`` says which releases). The API server prunes or (with strict
  field validation) rejects fields a CRD schema does not declare, so objects that declare ``properties``
  are closed here too, unless marked ``x-kubernetes-preserve-unknown-fields``.
- A custom resource without a schema here (e.g. Strimzi's ``v1beta2`` for Strimzi before 1.0) gets a
  structural check only (apiVersion, kind, a valid name, a mapping ``spec``), and the report says so.
- Every object: a valid name for its kind (a Service's name must be a DNS label), valid label values,
  and no two objects of the same kind and name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent / "crd-schemas"

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS_LABEL_KINDS = frozenset({"Service"})
"""Kinds whose names become DNS labels (RFC 1035): at most 63 characters, no dots."""


@dataclass
class Report:
    """What ``validate`` found: errors fail the check; notes say what was checked less than fully."""

    checked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_builtin(api_version: str) -> bool:
    """Kubernetes' own API groups: the core group (``v1``), dot-less groups (``apps``) and ``*.k8s.io``."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def close_objects(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects with ``properties`` accept no other keys.

    This is what the API server does with a custom resource's unknown fields (drops them, or rejects them
    under strict field validation): a misspelt field in a template would otherwise pass here and vanish
    on the cluster.
    """
    if isinstance(schema, list):
        return [close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: close_objects(value) for key, value in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields", False)
    ):
        closed["additionalProperties"] = False
    return closed


def crd_schema_path(api_version: str, kind: str, schema_dir: Path = SCHEMA_DIR) -> Path:
    group, _, version = api_version.rpartition("/")
    return schema_dir / group / f"{kind.lower()}_{version}.json"


def _names(doc: dict[str, Any], where: str) -> Iterator[str]:
    """Errors in the object's name and labels (which no JSON schema checks)."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        yield f"{where}: metadata.name is missing"
        return
    name = meta["name"]
    if doc.get("kind") in _DNS_LABEL_KINDS:
        if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
            yield f"{where}: name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', at most 63)"
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        yield f"{where}: name {name!r} is not a DNS subdomain (a-z, 0-9, '-', '.', at most 253)"
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            yield f"{where}: label {key}={value!r} is not a valid label value"


def _builtin(doc: dict[str, Any], where: str, kube_versions: Iterable[str]) -> Iterator[str]:
    for version in kube_versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            yield f"{where}: {exc.message}"
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            yield f"{where} (Kubernetes {version}): {path}: {exc.message}"


def _custom(doc: dict[str, Any], where: str, schema_dir: Path, report: Report) -> Iterator[str]:
    path = crd_schema_path(doc["apiVersion"], doc["kind"], schema_dir)
    if not path.is_file():
        report.notes.append(
            f"{where}: no CRD schema for {doc['apiVersion']} {doc['kind']}: structural check only"
        )
        if not isinstance(doc.get("spec"), dict):
            yield f"{where}: spec must be a mapping"
        return
    schema = close_objects(json.loads(path.read_text()))
    body = {key: value for key, value in doc.items() if key != "metadata"}  # metadata: checked by _names
    validator = jsonschema.Draft4Validator(schema)
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
        location = ".".join(str(p) for p in error.path) or "(top)"
        yield f"{where} (CRD schema {path.relative_to(schema_dir)}): {location}: {error.message}"


def validate(
    docs: Iterable[Any], source: str, kube_versions: list[str], schema_dir: Path = SCHEMA_DIR
) -> Report:
    """Check every rendered object; see the module docstring for what is checked how."""
    report = Report()
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("apiVersion"), str) or "kind" not in doc:
            report.errors.append(f"{source}: a document without apiVersion and kind: {str(doc)[:80]}")
            continue
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{source}: {doc['kind']}/{name}"
        report.checked.append(where)
        report.errors.extend(_names(doc, where))
        key = (doc["kind"], str(name))
        if key in seen:
            report.errors.append(f"{where}: defined twice")
        seen.add(key)
        if is_builtin(doc["apiVersion"]):
            report.errors.extend(_builtin(doc, where, kube_versions))
        else:
            report.errors.extend(_custom(doc, where, schema_dir, report))
    return report


def extract_crds(paths: Iterable[Path], out_dir: Path, origin: str) -> list[Path]:
    """Write the ``openAPIV3Schema`` of each served version of each CRD, as ``<group>/<kind>_<version>.json``
    (the path ``crd_schema_path`` looks up)."""
    written = []
    for path in paths:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                schema = dict(version["schema"]["openAPIV3Schema"])
                schema["$comment"] = (
                    f"openAPIV3Schema of {crd['metadata']['name']} {version['name']}, {origin}"
                )
                target = out_dir / spec["group"] / f"{spec['names']['kind'].lower()}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
                written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check rendered manifests (multi-document YAML files)")
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument("--kube-version", action="append", required=True, help="repeat for several")
    check.add_argument("--schema-dir", type=Path, default=SCHEMA_DIR)
    extract = commands.add_parser("extract-crds", help="write CRD schemas as JSON for `validate`")
    extract.add_argument("files", nargs="+", type=Path)
    extract.add_argument("--origin", required=True, help="where the CRDs come from (release, path)")
    extract.add_argument("--out", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)

    if args.command == "extract-crds":
        for target in extract_crds(args.files, args.out, args.origin):
            print(f"wrote {target}")
        return 0
    failed = False
    for path in args.files:
        report = validate(yaml.safe_load_all(path.read_text()), path.name, args.kube_version, args.schema_dir)
        for note in report.notes:
            print(f"note: {note}")
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        versions = ", ".join(args.kube_version)
        print(
            f"{path.name}: {len(report.checked)} objects, {len(report.errors)} errors (Kubernetes {versions})"
        )
        failed = failed or bool(report.errors) or not report.checked
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
