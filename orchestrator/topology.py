"""The engine's Kafka topics: names, partition counts and configs, declared in ``topics/engine.toml``.

The TOML file is the single source of truth, read both by the engine (through the ``*_topic`` name
functions) and by ``orchestrator topics plan|apply`` (through :func:`engine_topics`), so the topics that
exist and the topics the code uses cannot disagree.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator._resources import resource_dir
from orchestrator.settings import Settings

SPEC_FILE = "engine.toml"
ROLES = ("inbox", "history", "changelog", "tasks", "outcomes", "dlq", "keyed", "keyed_changelog")
RUN_KEYED_ROLES = ("inbox", "history", "changelog", "outcomes")
"""Roles whose records are keyed by run id; they must share one partition count."""

# No dots: "{app}.tasks.{queue}" must never be readable as another app's topic. Kafka also forbids
# anything outside [A-Za-z0-9._-].
_NAME_PART = re.compile(r"[A-Za-z0-9_-]{1,100}")
_MAX_TOPIC_LENGTH = 249


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it should exist on the cluster."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(hash=False)
    role: str
    """Which entry of ``engine.toml`` it comes from (``inbox``, ``tasks``...)."""


@dataclass(frozen=True)
class TopicTemplate:
    """One ``[topics.<role>]`` entry of the spec file, before an app name is filled in."""

    role: str
    name: str
    partitions: int | None
    """``None`` means "the app's ``partitions`` setting"."""
    config: dict[str, str] = field(hash=False)
    description: str = ""

    @property
    def per_queue(self) -> bool:
        return "{queue}" in self.name


def spec_path() -> Path:
    """The spec file: packaged copy in a wheel, the repository's ``topics/`` in a checkout."""
    return resource_dir("topics") / SPEC_FILE


@functools.cache
def load_templates(path: Path | None = None) -> dict[str, TopicTemplate]:
    """Parse and validate the spec file, keyed by role (cached: it is read on every name lookup)."""
    source = path or spec_path()
    with source.open("rb") as handle:
        raw = tomllib.load(handle)
    entries = raw.get("topics")
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: expected a [topics.<role>] table")
    templates = {role: _template(role, entry, source) for role, entry in entries.items()}
    missing = [role for role in ROLES if role not in templates]
    if missing:
        raise ValueError(f"{source}: missing topic roles {missing}")
    return templates


def _template(role: str, entry: Mapping[str, Any], source: Path) -> TopicTemplate:
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{source}: topics.{role}.name must be a string")
    placeholders = set(re.findall(r"\{([^}]*)\}", name))
    if not placeholders <= {"app", "queue"} or "app" not in placeholders:
        raise ValueError(f"{source}: topics.{role}.name may use only {{app}} (required) and {{queue}}")
    partitions = entry.get("partitions", "app")
    if partitions != "app" and not (isinstance(partitions, int) and partitions >= 1):
        raise ValueError(f'{source}: topics.{role}.partitions must be "app" or a positive integer')
    if role in RUN_KEYED_ROLES and partitions != "app":
        raise ValueError(f'{source}: run-keyed topic {role} must use partitions = "app"')
    config = entry.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
        raise ValueError(f"{source}: topics.{role}.config values must be strings (as Kafka reports them)")
    return TopicTemplate(
        role=role,
        name=name,
        partitions=None if partitions == "app" else int(partitions),
        config=dict(config),
        description=str(entry.get("description", "")),
    )


def _check_part(kind: str, value: str) -> str:
    if not _NAME_PART.fullmatch(value):
        raise ValueError(f"invalid {kind} name {value!r}: use 1-100 of A-Z a-z 0-9 _ -")
    return value


def topic_name(role: str, app: str, queue: str | None = None) -> str:
    """The topic name for ``role`` of ``app`` (and ``queue`` for per-queue roles)."""
    template = load_templates()[role]
    values = {"app": _check_part("app", app)}
    if template.per_queue:
        if queue is None:
            raise ValueError(f"topic role {role!r} needs a queue name")
        values["queue"] = _check_part("queue", queue)
    name = template.name.format(**values)
    if len(name) > _MAX_TOPIC_LENGTH:
        raise ValueError(f"topic name {name!r} is longer than Kafka's {_MAX_TOPIC_LENGTH} characters")
    return name


def inbox_topic(app: str) -> str:
    return topic_name("inbox", app)


def history_topic(app: str) -> str:
    return topic_name("history", app)


def changelog_topic(app: str) -> str:
    return topic_name("changelog", app)


def tasks_topic(app: str, queue: str) -> str:
    return topic_name("tasks", app, queue)


def outcomes_topic(app: str) -> str:
    return topic_name("outcomes", app)


def dlq_topic(app: str) -> str:
    return topic_name("dlq", app)


def keyed_topic(app: str) -> str:
    return topic_name("keyed", app)


def keyed_changelog_topic(app: str) -> str:
    return topic_name("keyed_changelog", app)


def engine_topics(app_name: str, settings: Settings, queues: Iterable[str] = ("default",)) -> list[TopicSpec]:
    """Every topic ``app_name`` needs, in spec-file order, one tasks topic per distinct queue."""
    if settings.min_insync_replicas > settings.replication_factor:
        raise ValueError(
            f"min_insync_replicas={settings.min_insync_replicas} exceeds replication_factor="
            f"{settings.replication_factor}: every write to the engine topics would fail"
        )
    unique_queues = list(dict.fromkeys(queues))
    common = {"min.insync.replicas": str(settings.min_insync_replicas)}
    specs: list[TopicSpec] = []
    for role, template in load_templates().items():
        partitions = settings.partitions if template.partitions is None else template.partitions
        for queue in unique_queues if template.per_queue else [None]:
            specs.append(
                TopicSpec(
                    name=topic_name(role, app_name, queue),
                    partitions=partitions,
                    replication_factor=settings.replication_factor,
                    config={**template.config, **common},
                    role=role,
                )
            )
    return specs


__all__ = [
    "ROLES",
    "RUN_KEYED_ROLES",
    "TopicSpec",
    "TopicTemplate",
    "changelog_topic",
    "dlq_topic",
    "engine_topics",
    "history_topic",
    "inbox_topic",
    "keyed_changelog_topic",
    "keyed_topic",
    "load_templates",
    "outcomes_topic",
    "spec_path",
    "tasks_topic",
    "topic_name",
]
