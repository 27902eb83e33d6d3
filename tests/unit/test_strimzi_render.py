"""``topics render --format strimzi``: the resources match the topic specs, the ACL plan and Strimzi's CRDs.

The CRDs (``tests/unit/strimzi/``, Apache-2.0, see its README) are Strimzi's own. Each rendered resource is
validated against its version's ``openAPIV3Schema`` with ``jsonschema``, and, since Kubernetes silently
prunes fields a structural schema does not declare, every field rendered must also be declared there (a
misspelt key would otherwise vanish on ``kubectl apply``). The CRDs' CEL rules
(``x-kubernetes-validations``) are not evaluated here; the only ones concern ``tls`` certificate
validity fields, which the render never sets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import _acls, _strimzi
from orchestrator._acls import AppShape, Component
from orchestrator.cli import app as cli
from orchestrator.settings import Settings
from orchestrator.topology import engine_topics

CRDS = Path(__file__).parent / "strimzi"
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
SHAPE = AppShape("shop", ("default", "slow"), ("approvals",))
CRD_FILES = {"KafkaTopic": "043-Crd-kafkatopic.yaml", "KafkaUser": "044-Crd-kafkauser.yaml"}


def _schema(kind: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text(encoding="utf-8"))
    assert crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    return served[version]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _undeclared(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``value`` that ``schema`` does not declare (Kubernetes would prune them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
        return []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = [f"{path}.{key}" for key in value if key not in props]
        return out + [
            p for key, v in value.items() if key in props for p in _undeclared(v, props[key], f"{path}.{key}")
        ]
    if isinstance(value, list):
        return [
            p for i, v in enumerate(value) for p in _undeclared(v, schema.get("items", {}), f"{path}[{i}]")
        ]
    return []


def _render(*args: str) -> list[dict[str, Any]]:
    done = CliRunner().invoke(cli, ["topics", "render", *args])
    assert done.exit_code == 0, done.output
    return list(yaml.safe_load_all(done.output))


def test_rendered_resources_satisfy_strimzis_crds() -> None:
    docs = _render("--app", "shop", "--queue", "default", "--queue", "slow", "--source-topic", "approvals",
                   "--users", "--cluster", "prod", "--namespace", "jobs")  # fmt: skip
    assert {d["kind"] for d in docs} == {"KafkaTopic", "KafkaUser"}
    for doc in docs:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"
        schema = _schema(doc["kind"], "v1")
        jsonschema.validate(doc, schema)
        assert _undeclared(doc, schema) == []
        assert DNS_1123_SUBDOMAIN.fullmatch(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 253
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert doc["metadata"]["namespace"] == "jobs"


def test_a_schema_violation_is_caught() -> None:
    """The check above can fail: a wrong pattern type and an undeclared field are both reported."""
    (user,) = _strimzi.kafka_users(SHAPE, "c", components=[Component.WORKER])
    schema = _schema("KafkaUser", "v1")
    user["spec"]["authorization"]["acls"][0]["resource"]["patternType"] = (
        "prefixed"  # Kafka's word, not Strimzi's
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(user, schema)
    user["spec"]["authorization"]["acls"][0]["resource"]["patternType"] = "literal"
    user["spec"]["acls"] = []
    assert _undeclared(user, schema) == [".spec.acls"]


def test_topics_equal_what_topics_apply_creates() -> None:
    settings = Settings(partitions=6, replication_factor=3, min_insync_replicas=2)
    specs = engine_topics("shop", settings, ["default", "slow"])
    topics = _strimzi.kafka_topics(specs, "c")
    assert [
        (t["spec"]["topicName"], t["spec"]["partitions"], t["spec"]["replicas"], t["spec"]["config"])
        for t in topics
    ] == [(s.name, s.partitions, s.replication_factor, s.config) for s in specs]
    assert all(
        isinstance(v, str) for t in topics for v in t["spec"]["config"].values()
    )  # as Kafka reports them


def test_users_carry_exactly_the_plan() -> None:
    for auth in _strimzi.AUTHENTICATIONS:
        users = _strimzi.kafka_users(SHAPE, "c", authentication=auth)
        assert [u["metadata"]["name"] for u in users] == [f"shop-{c.value}" for c in Component]
        for user, component in zip(users, Component, strict=True):
            assert user["spec"]["authentication"] == {"type": auth}
            assert user["spec"]["authorization"]["type"] == "simple"
            plan = _acls.plan(SHAPE, [component])
            rendered = user["spec"]["authorization"]["acls"]
            assert [
                (r["resource"]["type"], r["resource"].get("name"), r["operations"]) for r in rendered
            ] == [(a.resource.kind.value, a.resource.name, [op.value for op in a.operations]) for a in plan]
            txn = [r["resource"] for r in rendered if r["resource"]["type"] == "transactionalId"]
            assert txn == ([{"type": "transactionalId", "name": "shop.processor.", "patternType": "prefix"}]
                           if component is Component.PROCESSOR else [])  # fmt: skip
    with pytest.raises(ValueError, match="authentication"):
        _strimzi.kafka_users(SHAPE, "c", authentication="plain")


def test_names_that_kubernetes_refuses_are_mapped_apart() -> None:
    names = ["My_App.inbox", "my-app.inbox", "my_app.inbox", "shop.keyed-changelog"]
    mapped = [_strimzi.resource_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    assert mapped[-1] == "shop.keyed-changelog"  # valid names stay as they are
    assert all(DNS_1123_SUBDOMAIN.fullmatch(m) for m in mapped)
    (topic,) = _strimzi.kafka_topics([engine_topics("My_App", Settings())[0]], "c")
    assert topic["spec"]["topicName"] == "My_App.inbox"  # the real name rides in spec.topicName


def test_older_api_version_and_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "topics.yaml"
    done = CliRunner().invoke(
        cli,
        ["topics", "render", "--app", "shop", "--api-version", "kafka.strimzi.io/v1beta2", "--out", str(out)],
    )
    assert done.exit_code == 0, done.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == len(engine_topics("shop", Settings())) and {d["apiVersion"] for d in docs} == {
        "kafka.strimzi.io/v1beta2"
    }
    for bad in (["--format", "helm"], ["--api-version", "v2"], ["--authentication", "plain"]):
        assert CliRunner().invoke(cli, ["topics", "render", "--app", "shop", *bad]).exit_code == 2
