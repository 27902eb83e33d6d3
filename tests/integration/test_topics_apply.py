"""``topics apply`` against the real broker: creates what is declared, is idempotent, and handles drift."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from orchestrator import _topic_admin
from orchestrator._topic_admin import ChangeKind
from orchestrator.cli import app as cli_app
from orchestrator.settings import Settings
from orchestrator.topology import engine_topics, history_topic, inbox_topic


def _settings(bootstrap: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap, partitions=3, replication_factor=1, min_insync_replicas=1)


def test_apply_creates_every_engine_topic_then_has_nothing_to_do(
    admin: AdminClient, kafka_bootstrap: str, unique_name: str
) -> None:
    specs = engine_topics(unique_name, _settings(kafka_bootstrap), queues=["default", "emails"])

    changes = _topic_admin.apply(admin, specs)

    assert [(c.topic, c.kind, c.applied) for c in changes] == [
        (s.name, ChangeKind.CREATE, True) for s in specs
    ]
    observed = _topic_admin.observe(admin, [s.name for s in specs])
    for spec in specs:
        assert observed[spec.name].partitions == spec.partitions
        assert observed[spec.name].replication_factor == 1
        for key, value in spec.config.items():
            assert observed[spec.name].config[key] == value, (spec.name, key)
    assert _topic_admin.apply(admin, specs) == []
    assert _topic_admin.plan(admin, specs) == []


def test_drift_is_reported_and_fixed_only_with_flags(
    admin: AdminClient, kafka_bootstrap: str, unique_name: str, create_topics: Callable[..., list[str]]
) -> None:
    inbox, history = inbox_topic(unique_name), history_topic(unique_name)
    create_topics(inbox, partitions=1)
    create_topics(history, partitions=3, config={"retention.ms": "1000"})
    specs = engine_topics(unique_name, _settings(kafka_bootstrap))

    drift = {(c.topic, c.kind, c.key) for c in _topic_admin.plan(admin, specs) if c.kind != ChangeKind.CREATE}
    assert drift == {
        (inbox, ChangeKind.ADD_PARTITIONS, None),
        (history, ChangeKind.UPDATE_CONFIG, "retention.ms"),
    }

    without_flags = _topic_admin.apply(admin, specs)
    left = {(c.topic, c.kind) for c in without_flags if not c.applied}
    assert left == {(inbox, ChangeKind.ADD_PARTITIONS), (history, ChangeKind.UPDATE_CONFIG)}
    observed = _topic_admin.observe(admin, [inbox, history])
    assert observed[inbox].partitions == 1
    assert observed[history].config["retention.ms"] == "1000"

    with_flags = _topic_admin.apply(admin, specs, fix_config=True, allow_partition_increase=True)
    assert {(c.topic, c.kind) for c in with_flags if c.applied} == left
    observed = _topic_admin.observe(admin, [inbox, history])
    assert observed[inbox].partitions == 3
    assert observed[history].config["retention.ms"] == "-1"
    assert _topic_admin.apply(admin, specs) == []


def test_cli_apply_then_plan(kafka_bootstrap: str, unique_name: str) -> None:
    runner = CliRunner()
    common = ["--app", unique_name, "--bootstrap", kafka_bootstrap, "--queue", "default"]

    applied = runner.invoke(cli_app, ["topics", "apply", *common])
    assert applied.exit_code == 0, applied.output
    assert f"{unique_name}.history" in applied.output

    planned = runner.invoke(cli_app, ["topics", "plan", *common])
    assert planned.exit_code == 0, planned.output
    assert "match their declaration" in planned.output
