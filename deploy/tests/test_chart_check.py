"""deploy/chart_check.py finds what it claims to find: a check that passes everything checks nothing."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chart_check

VERSIONS = ["1.27.0", "1.37.0"]

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "rel-processor", "labels": {"app.kubernetes.io/component": "processor"}},
    "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 8081, "targetPort": "http"}]},
}

SCALED_OBJECT: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "rel-worker"},
    "spec": {
        "scaleTargetRef": {"name": "rel-worker"},
        "triggers": [{"type": "kafka", "metadata": {"topic": "shop.tasks.default"}}],
    },
}


def errors(*docs: dict[str, Any]) -> list[str]:
    return chart_check.validate(docs, "test", VERSIONS).errors


def test_valid_objects_pass() -> None:
    assert errors(SERVICE, SCALED_OBJECT) == []


def test_a_misspelt_field_of_a_kubernetes_kind_fails_in_strict_mode() -> None:
    bad = copy.deepcopy(SERVICE)
    bad["spec"]["publishNotReadyAdresses"] = True
    found = errors(bad)
    assert len(found) == 2  # once per Kubernetes version
    assert "publishNotReadyAdresses" in found[0]


def test_a_wrong_type_fails() -> None:
    bad = copy.deepcopy(SERVICE)
    bad["spec"]["ports"][0]["port"] = "eighty"
    assert errors(bad)


def test_custom_resources_are_checked_against_their_crd_schema_closed_to_unknown_fields() -> None:
    unknown = copy.deepcopy(SCALED_OBJECT)
    unknown["spec"]["minReplicas"] = 1  # KEDA calls it minReplicaCount
    assert any("minReplicas" in e for e in errors(unknown))
    wrong_type = copy.deepcopy(SCALED_OBJECT)
    wrong_type["spec"]["maxReplicaCount"] = "ten"
    assert any("maxReplicaCount" in e for e in errors(wrong_type))
    missing = copy.deepcopy(SCALED_OBJECT)
    del missing["spec"]["scaleTargetRef"]
    assert any("scaleTargetRef" in e for e in errors(missing))
    # Trigger metadata is a free map of strings in the CRD: any key passes, a number does not.
    numeric = copy.deepcopy(SCALED_OBJECT)
    numeric["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50
    assert errors(numeric)


def test_a_custom_resource_without_a_schema_gets_a_structural_check_and_a_note() -> None:
    old_strimzi = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "shop.inbox"},
        "spec": {"partitions": 4},
    }
    report = chart_check.validate([old_strimzi], "test", VERSIONS)
    assert report.errors == []
    assert "structural check only" in report.notes[0]
    assert chart_check.validate([{**old_strimzi, "spec": [1]}], "test", VERSIONS).errors


def test_names_labels_and_duplicates() -> None:
    dotted = copy.deepcopy(SERVICE)
    dotted["metadata"]["name"] = "rel.processor"  # fine for a ConfigMap, not for a Service (DNS label)
    assert any("DNS-1035" in e for e in errors(dotted))
    long_label = copy.deepcopy(SERVICE)
    long_label["metadata"]["labels"]["x"] = "v" * 64
    assert any("label" in e for e in errors(long_label))
    assert any("defined twice" in e for e in errors(SERVICE, SERVICE))


def test_an_unknown_kubernetes_kind_fails() -> None:
    assert errors({"apiVersion": "apps/v1", "kind": "StatefulSets", "metadata": {"name": "x"}})


def test_close_objects_keeps_maps_that_preserve_unknown_fields_open() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    closed = chart_check.close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["properties"]["map"]["additionalProperties"] == {"type": "string"}
