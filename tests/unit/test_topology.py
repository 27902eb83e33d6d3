"""The topic declarations and name functions, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import topology
from orchestrator.settings import Settings
from orchestrator.topology import (
    changelog_topic,
    dlq_topic,
    engine_topics,
    history_topic,
    inbox_topic,
    outcomes_topic,
    tasks_topic,
)


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"partitions": 6, "replication_factor": 3, "min_insync_replicas": 2}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def test_name_functions() -> None:
    assert inbox_topic("shop") == "shop.inbox"
    assert history_topic("shop") == "shop.history"
    assert changelog_topic("shop") == "shop.changelog"
    assert tasks_topic("shop", "emails") == "shop.tasks.emails"
    assert outcomes_topic("shop") == "shop.outcomes"
    assert dlq_topic("shop") == "shop.dlq"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "ü", "x" * 101])
def test_invalid_app_and_queue_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        inbox_topic(bad)
    with pytest.raises(ValueError, match="invalid"):
        tasks_topic("shop", bad)


def test_engine_topics_cover_every_role_in_order() -> None:
    specs = engine_topics("shop", _settings(), queues=["default", "emails", "default"])

    assert [(s.role, s.name) for s in specs] == [
        ("inbox", "shop.inbox"),
        ("history", "shop.history"),
        ("changelog", "shop.changelog"),
        ("tasks", "shop.tasks.default"),
        ("tasks", "shop.tasks.emails"),
        ("outcomes", "shop.outcomes"),
        ("dlq", "shop.dlq"),
        ("keyed", "shop.keyed"),
        ("keyed_changelog", "shop.keyed-changelog"),
        ("instances", "shop.instances"),
    ]


def test_partitions_replication_and_min_isr_come_from_settings() -> None:
    specs = {s.name: s for s in engine_topics("shop", _settings())}

    for role in topology.RUN_KEYED_ROLES:
        assert specs[f"shop.{role}"].partitions == 6
    assert specs["shop.tasks.default"].partitions == 6
    assert specs["shop.dlq"].partitions == 1
    assert {s.replication_factor for s in specs.values()} == {3}
    assert {s.config["min.insync.replicas"] for s in specs.values()} == {"2"}


def test_retention_and_cleanup_policies() -> None:
    specs = {s.role: s.config for s in engine_topics("shop", _settings())}

    assert specs["history"]["cleanup.policy"] == "delete"
    assert specs["history"]["retention.ms"] == "-1"
    assert specs["changelog"]["cleanup.policy"] == "compact"
    assert int(specs["changelog"]["min.compaction.lag.ms"]) <= 60_000
    week = str(7 * 24 * 3600 * 1000)
    for role in ("inbox", "tasks", "outcomes"):
        assert specs[role] | {"retention.ms": week, "cleanup.policy": "delete"} == specs[role], role
    assert specs["dlq"]["retention.ms"] == "-1"


def test_min_isr_above_replication_is_refused() -> None:
    with pytest.raises(ValueError, match="min_insync_replicas"):
        engine_topics("shop", _settings(replication_factor=1, min_insync_replicas=2))


def test_specs_are_hashable_values() -> None:
    first, second = engine_topics("shop", _settings()), engine_topics("shop", _settings())
    assert first == second
    assert len(set(first)) == len(first)


def test_spec_file_is_found_in_the_checkout() -> None:
    assert topology.spec_path().name == "engine.toml"
    assert topology.spec_path().is_file()


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_run_keyed_roles_must_follow_the_app_partitions(tmp_path: Path) -> None:
    text = topology.spec_path().read_text(encoding="utf-8")
    declared = 'name = "{app}.history"\npartitions = "app"'
    broken = text.replace(declared, 'name = "{app}.history"\npartitions = 2')
    assert broken != text
    with pytest.raises(ValueError, match="run-keyed"):
        topology.load_templates(_write(tmp_path, broken))


def test_unknown_placeholders_and_missing_roles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may use only"):
        topology.load_templates(_write(tmp_path, '[topics.inbox]\nname = "{tenant}.inbox"\n'))
    with pytest.raises(ValueError, match="missing topic roles"):
        topology.load_templates(_write(tmp_path, '[topics.inbox]\nname = "{app}.inbox"\n'))
