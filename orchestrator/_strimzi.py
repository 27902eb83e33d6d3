"""Strimzi resources for an app: a ``KafkaTopic`` per engine topic, a ``KafkaUser`` per component (ADR 0021).

Teams on Kubernetes declare topics and users as custom resources that the Strimzi operators reconcile, so
the engine's topics (``topics/engine.toml``, the same specs ``topics apply`` creates) and the ACL plan
(`orchestrator._acls`) are rendered as such. Kubernetes names are DNS-1123 subdomains (lower case,
``[a-z0-9.-]``) while Kafka topic names may hold ``_`` and capitals, so every ``KafkaTopic`` carries its
real name in ``spec.topicName``. Default API version ``kafka.strimzi.io/v1`` (the only one Strimzi's
current CRDs serve); ``v1beta2`` for operators older than 0.49.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import yaml

from orchestrator import _acls
from orchestrator._acls import AppShape, Component
from orchestrator.topology import TopicSpec

API_VERSIONS = ("kafka.strimzi.io/v1", "kafka.strimzi.io/v1beta2")
AUTHENTICATIONS = ("scram-sha-512", "tls")
_MAX_NAME = 253


def resource_name(name: str) -> str:
    """A DNS-1123 subdomain for ``name``: lower case, other characters as ``-``; a short hash is added
    whenever that changed the name, so two topics differing only in case or ``_`` never collide."""
    cleaned = re.sub(r"[^a-z0-9.-]", "-", name.lower()).strip(".-") or "x"
    if cleaned != name:
        cleaned = f"{cleaned[: _MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return cleaned


def kafka_topics(
    specs: Iterable[TopicSpec],
    cluster: str,
    *,
    api_version: str = API_VERSIONS[0],
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": api_version,
            "kind": "KafkaTopic",
            "metadata": _metadata(resource_name(spec.name), cluster, namespace, role=spec.role),
            "spec": {
                "topicName": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "config": dict(spec.config),
            },
        }
        for spec in specs
    ]


def kafka_users(
    shape: AppShape,
    cluster: str,
    *,
    authentication: str = AUTHENTICATIONS[0],
    api_version: str = API_VERSIONS[0],
    namespace: str | None = None,
    components: Iterable[Component] = tuple(Component),
    create_topics: bool = False,
) -> list[dict[str, Any]]:
    """A ``KafkaUser`` per component named ``{app}-{component}``, with exactly the planned ACLs."""
    if authentication not in AUTHENTICATIONS:
        raise ValueError(f"authentication {authentication!r}: use one of {', '.join(AUTHENTICATIONS)}")
    users = []
    for component in components:
        acls = _acls.plan(shape, [component], create_topics=create_topics)
        name = resource_name(f"{shape.name}-{component.value}")
        users.append(
            {
                "apiVersion": api_version,
                "kind": "KafkaUser",
                "metadata": _metadata(name, cluster, namespace, component=component.value),
                "spec": {
                    "authentication": {"type": authentication},
                    "authorization": {"type": "simple", "acls": _acls.strimzi_acls(acls)},
                },
            }
        )
    return users


def _metadata(name: str, cluster: str, namespace: str | None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {
        "strimzi.io/cluster": cluster,
        **{f"orchestrator.io/{key}": value for key, value in labels.items()},
    }
    return meta


def to_yaml(resources: Iterable[dict[str, Any]]) -> str:
    """One YAML stream, a ``---`` separated document per resource, keys in the order built."""
    return str(yaml.safe_dump_all(list(resources), sort_keys=False, default_flow_style=False))


__all__ = ["API_VERSIONS", "AUTHENTICATIONS", "kafka_topics", "kafka_users", "resource_name", "to_yaml"]
