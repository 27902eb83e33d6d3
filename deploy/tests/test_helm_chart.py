"""The Helm chart, rendered with helm and read back: what a cluster would run is what the engine expects.

These tests run from `deploy/check-chart` (which gets helm), not from `./dev test`: they need helm, and
the engine's test run must not depend on it (ADR 0020). Names the chart writes by hand (task topics, the
workers' group, the settings variables) are compared with what the engine's own code builds, so a
change on either side fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from orchestrator import App, topology
from orchestrator._engine import kafka as engine_kafka
from orchestrator._engine.worker import Worker, WorkerConfig
from orchestrator.cli import app as cli_app
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kafka-orchestrator"
CI = CHART / "ci"
KUBE_VERSION = "1.37.0"

PENDING_FLAGS: dict[str, set[str]] = {
    "processor": {"--http-port", "--metrics-port"},
    "worker": {"--metrics-port"},
    "ui": {"--app", "--port", "--metrics-port"},
}
"""Flags the chart passes that other branches are adding to the CLI (issue 14). While the CLI lacks one,
the parse check leaves it out; once merged, it is parsed like any other."""


def _helm() -> str:
    helm = os.environ.get("HELM") or shutil.which("helm") or str(Path.home() / "go" / "bin" / "helm")
    if not Path(helm).is_file():
        pytest.fail("helm not found: run these tests with deploy/check-chart, which gets it")
    return helm


def render(*values_files: str, **sets: str) -> list[dict[str, Any]]:
    """The chart's objects for these ci/ values files and --set overrides."""
    args = [_helm(), "template", "rel", str(CHART), "--namespace", "ns", "--kube-version", KUBE_VERSION]
    for name in values_files:
        args += ["-f", str(CI / name)]
    for key, value in sets.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(**sets: str) -> str:
    args = [_helm(), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION]
    for key, value in sets.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode != 0, "helm template should have refused these values"
    return done.stderr


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    pod = workload["spec"]["template"]["spec"]
    return next(c for c in pod["initContainers" if init else "containers"] if c["name"] == name)


def environment(docs: list[dict[str, Any]], ctr: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The variables Kubernetes would give the container, from the rendered ConfigMaps and Secrets."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        elif source["secretRef"]["name"] in secrets:  # others are the user's own Secrets
            env.update(secrets[source["secretRef"]["name"]])
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
    return env


def settings_in(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the engine would read them in that container."""
    for key in list(os.environ):
        if key.startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container arguments."""
    out = []
    for arg in args:
        for key, value in env.items():
            arg = arg.replace(f"$({key})", value)
        out.append(arg)
    return out


# -- processors ---------------------------------------------------------------------------------------------
def test_processor_instance_id_is_the_pod_name_and_its_state_is_on_its_own_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render("production-values.yaml")
    sts = one(docs, "StatefulSet", "processor")
    ctr = container(sts, "processor")
    env = environment(docs, ctr, "rel-kafka-orchestrator-processor-2")
    args = expand(ctr["args"], env)
    assert args[args.index("--instance-id") + 1] == "rel-kafka-orchestrator-processor-2"
    assert sts["spec"]["replicas"] == 3

    settings = settings_in(env, monkeypatch)
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert Path(mounts[claim["metadata"]["name"]]) == settings.state_dir
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert (
        settings.partitions == 24 and settings.replication_factor == 3 and settings.min_insync_replicas == 2
    )
    # Scale-down and uninstall keep the stores: a processor that comes back restores only the tail.
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }


def test_processor_standby_replicas_reach_the_processor_command() -> None:
    """Off by default; production values keep one warm copy of each partition (ADR 0024)."""

    def standbys(*values: str, **sets: str) -> int:
        args = container(one(render(*values, **sets), "StatefulSet", "processor"), "processor")["args"]
        return int(args[args.index("--standby-replicas") + 1])

    assert standbys() == 0
    assert standbys("production-values.yaml") == 1
    assert standbys(processor__standbyReplicas="2") == 2
    assert "minimum" in render_error(processor__standbyReplicas="-1")


def test_processor_is_ready_only_through_its_ready_endpoint_on_the_http_port() -> None:
    docs = render(processor__httpPort="8181")
    ctr = container(one(docs, "StatefulSet", "processor"), "processor")
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports["http"] == 8181
    assert ctr["args"][ctr["args"].index("--http-port") + 1] == "8181"
    service = one(docs, "Service", "processor")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # metrics while restoring
    assert one(docs, "StatefulSet", "processor")["spec"]["serviceName"] == service["metadata"]["name"]


def test_processors_are_spread_and_disrupted_one_at_a_time() -> None:
    docs = render("production-values.yaml")
    sts = one(docs, "StatefulSet", "processor")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget", "processor")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    terms = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    soft = render()
    affinity = one(soft, "StatefulSet", "processor")["spec"]["template"]["spec"]["affinity"][
        "podAntiAffinity"
    ]
    assert list(affinity) == ["preferredDuringSchedulingIgnoredDuringExecution"]


def test_topics_are_applied_by_an_init_container_with_admin_credentials_unless_strimzi_owns_them() -> None:
    docs = render("secure-values.yaml")
    init = container(one(docs, "StatefulSet", "processor"), "topics", init=True)
    assert init["args"] == ["topics", "apply", "--app", "shop", "--queue", "default", "--queue", "payments"]
    # The admin login comes last, so its ORCHESTRATOR_KAFKA__* override the app's (Kubernetes: last wins).
    assert init["envFrom"][-1] == {"secretRef": {"name": "shop-kafka-admin"}}
    strimzi = render("strimzi-values.yaml")
    assert "initContainers" not in one(strimzi, "StatefulSet", "processor")["spec"]["template"]["spec"]


# -- workers ------------------------------------------------------------------------------------------------
def _app_with_queues(*queues: str) -> App:
    app = App("shop", settings=Settings(_env_file=None))  # type: ignore[call-arg]
    for queue in queues:

        async def step() -> None: ...

        app.step(step, name=f"step_{queue}", queue=queue)
    return app


def test_keda_reads_the_lag_of_the_group_and_topics_the_workers_really_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render("keda-values.yaml")
    scaled = one(docs, "ScaledObject")
    deployment = one(docs, "Deployment", "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # KEDA owns the count

    # What a worker of this app subscribes to and in which group, from the worker's own code.
    app = _app_with_queues("payments")
    worker = Worker(app, WorkerConfig())
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(engine_kafka, "new_consumer", lambda conf: made.append(dict(conf)))
    worker._make_consumer()
    group, reset = made[0]["group.id"], made[0]["auto.offset.reset"]

    triggers = scaled["spec"]["triggers"]
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(worker.topics)
    assert sorted(worker.topics) == sorted(topology.tasks_topic("shop", q) for q in ("default", "payments"))
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == group
        assert (
            meta["offsetResetPolicy"] == reset
        )  # a new group's backlog counts as lag, as the worker reads it
        assert meta["bootstrapServers"] == "kafka-bootstrap.kafka.svc:9093"
        assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
        assert meta["allowIdleConsumers"] == "false"
        assert meta["lagThreshold"] == "50"
        # An idle app's lag is one commit marker per partition (test_pod_lifecycle.py): not an activation.
        assert meta["activationLagThreshold"] == "12"
        assert trigger["authenticationRef"]["name"] == one(docs, "TriggerAuthentication")["metadata"]["name"]


def test_hpa_is_the_alternative_without_keda() -> None:
    docs = render("hpa-values.yaml")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment", "worker")["metadata"]["name"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "External"]
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    cpu_only = one(render(worker__autoscaling__hpa__enabled="true"), "HorizontalPodAutoscaler")
    assert cpu_only["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    error = render_error(worker__autoscaling__hpa__enabled="true", worker__autoscaling__keda__enabled="true")
    assert "enable keda or hpa, not both" in error


def test_worker_grace_period_outlasts_its_result_drain() -> None:
    """On SIGTERM a worker finishes its running steps, then waits up to drain_timeout_s for results."""
    deployment = one(render(), "Deployment", "worker")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > WorkerConfig().drain_timeout_s
    args = container(deployment, "worker")["args"]
    assert "--instance-id" not in args  # dynamic membership for pods whose names change
    static = container(one(render(worker__staticMembership="true"), "Deployment", "worker"), "worker")
    assert static["args"][static["args"].index("--instance-id") + 1] == "$(POD_NAME)"


# -- configuration ------------------------------------------------------------------------------------------
def test_secure_settings_reach_every_client_from_the_configmap_and_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render("secure-values.yaml")
    for kind, component, name in (
        ("StatefulSet", "processor", "processor"),
        ("Deployment", "worker", "worker"),
        ("Deployment", "ui", "ui"),
    ):
        ctr = container(one(docs, kind, component), name)
        settings = settings_in(environment(docs, ctr, "pod-0"), monkeypatch)
        assert settings.kafka_client_settings() == {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "ssl.ca.location": "/etc/orchestrator/kafka-tls/ca.crt",
            "sasl.username": "shop-engine",
            "sasl.password": "not-a-real-password",
        }, name
        assert settings.bootstrap_servers == "kafka-0.kafka.example.com:9093,kafka-1.kafka.example.com:9093"
        mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
        assert mounts["/etc/orchestrator/kafka-tls"]["readOnly"] is True
    secret = one(docs, "Secret", "kafka")
    config = one(docs, "ConfigMap")
    assert "not-a-real-password" not in yaml.safe_dump(config)
    assert set(secret["stringData"]) == {
        "ORCHESTRATOR_KAFKA__SASL_USERNAME",
        "ORCHESTRATOR_KAFKA__SASL_PASSWORD",
    }


def test_a_properties_file_from_a_secret_gives_the_bootstrap_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = render("properties-file-values.yaml")
    sts = one(docs, "StatefulSet", "processor")
    ctr = container(sts, "processor")
    env = environment(docs, ctr, "pod-0")
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "kafka-config-file")
    volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "kafka-config-file")
    assert volume["secret"]["secretName"] == "shop-client-properties"
    in_pod = Path(mount["mountPath"]) / volume["secret"]["items"][0]["path"]
    assert env["ORCHESTRATOR_KAFKA_CONFIG_FILE"] == str(in_pod)
    # The file as the Secret would hold it, read where the variable points (moved under tmp_path).
    local = tmp_path / in_pod.relative_to("/")
    local.parent.mkdir(parents=True)
    local.write_text("bootstrap.servers=pkc-1.cloud:9092\nsecurity.protocol=SASL_SSL\nsasl.password=pw\n")
    env["ORCHESTRATOR_KAFKA_CONFIG_FILE"] = str(local)
    settings = settings_in(env, monkeypatch)
    assert (
        settings.bootstrap_servers == "pkc-1.cloud:9092"
    )  # no empty ORCHESTRATOR_BOOTSTRAP_SERVERS hides it
    assert settings.kafka_client_settings()["security.protocol"] == "SASL_SSL"


def test_ui_gets_its_token_from_a_secret_and_an_ingress(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.ui import UISettings

    docs = render("production-values.yaml")
    ui = container(one(docs, "Deployment", "ui"), "ui")
    token = next(v for v in ui["env"] if v["name"].startswith("ORCHESTRATOR_UI"))
    assert token["valueFrom"]["secretKeyRef"] == {"name": "shop-ui-token", "key": "token"}
    monkeypatch.setenv(token["name"], "from-the-secret")  # the variable the UI really reads
    assert UISettings().token is not None
    assert ui["args"][:7] == ["ui", "--app", "shop.workflows:app", "--port", "8080", "--host", "0.0.0.0"]
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == one(docs, "Service", "ui")["metadata"]["name"]
    made = render(ui__enabled="true", ui__auth__token="s3cret")
    assert one(made, "Secret", "ui")["stringData"] == {"token": "s3cret"}


def test_service_monitor_scrapes_the_metrics_port_of_every_component() -> None:
    docs = render("production-values.yaml")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    port = monitor["spec"]["endpoints"][0]["port"]
    scraped = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in docs
        if d["kind"] == "Service"
        and selector.items() <= d["metadata"]["labels"].items()
        and any(p["name"] == port and p["port"] == 9100 for p in d["spec"]["ports"])
    }
    assert scraped == {"processor", "worker", "ui"}
    for kind, component in (("StatefulSet", "processor"), ("Deployment", "worker"), ("Deployment", "ui")):
        ctr = one(docs, kind, component)["spec"]["template"]["spec"]["containers"][0]
        assert ctr["args"][ctr["args"].index("--metrics-port") + 1] == "9100"
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in ctr["ports"]


def test_strimzi_topics_users_and_a_rendered_file() -> None:
    docs = render("strimzi-values.yaml")
    topics = {
        d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic" and "topicName" in d["spec"]
    }
    assert set(topics) == {"shop.history", "shop.changelog"}
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == "my-cluster" for t in topics.values())
    assert all(t["apiVersion"] == "kafka.strimzi.io/v1" for t in topics.values())
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaTopic"}
    assert "shop.inbox" in names  # from strimzi.manifests
    assert one(docs, "KafkaUser")["spec"]["authentication"]["type"] == "scram-sha-512"
    assert not [d for d in render() if d["kind"] in ("KafkaTopic", "KafkaUser")]


# -- the commands the chart runs exist ----------------------------------------------------------------------
def _parse(args: list[str]) -> None:
    """Parse a container's arguments with the real CLI, without running anything."""
    group: Any = typer.main.get_command(cli_app)  # typer's own click: no isinstance against click's classes
    ctx = group.make_context("orchestrator", list(args), resilient_parsing=False)
    path = [args[0]]
    name, command, rest = group.resolve_command(ctx, list(args))
    if hasattr(command, "commands"):  # a group: topics apply
        sub = command.make_context(name or "", rest)
        name, command, rest = command.resolve_command(sub, rest)
        path.append(name or "")
    assert command is not None, f"no command {path}"
    known = {opt for param in command.params for opt in param.opts}
    pending = PENDING_FLAGS.get(path[0], set()) - known
    kept: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
        elif arg in pending:
            skip = True  # the flag and its value
        else:
            kept.append(arg)
    command.make_context(" ".join(path), kept)


@pytest.mark.parametrize("values", ["production-values.yaml", "secure-values.yaml", "minimal-values.yaml"])
def test_every_command_line_the_chart_runs_parses_with_the_cli(values: str) -> None:
    docs = render(values)
    group: Any = typer.main.get_command(cli_app)
    for doc in docs:
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for ctr in [*pod.get("initContainers", []), *pod["containers"]]:
            assert ctr["command"] == ["orchestrator"]
            args = expand(ctr["args"], {"POD_NAME": "pod-0"})
            if args[0] not in group.commands and args[0] in PENDING_FLAGS:
                continue  # `orchestrator ui` is being added on another branch
            _parse(args)


def test_the_parse_check_rejects_an_unknown_flag() -> None:
    with pytest.raises(Exception, match="No such option: --no-such-flag"):
        _parse(["worker", "shop.workflows:app", "--concurrency", "4", "--no-such-flag", "1"])


def test_a_change_of_configuration_or_chart_made_secret_rolls_the_pods() -> None:
    def annotations(**sets: str) -> list[dict[str, str]]:
        docs = render("secure-values.yaml", **sets)
        return [
            one(docs, kind, component)["spec"]["template"]["metadata"]["annotations"]
            for kind, component in (
                ("StatefulSet", "processor"),
                ("Deployment", "worker"),
                ("Deployment", "ui"),
            )
        ]

    before = annotations()
    assert before == annotations()  # rendering is deterministic
    partitions = annotations(kafka__partitions="24")
    password = annotations(**{"kafka.secret.settings.sasl\\.password": "rotated"})
    for old, new_config, new_secret in zip(before, partitions, password, strict=True):
        assert new_config["checksum/config"] != old["checksum/config"]
        assert new_secret["checksum/secret"] != old["checksum/secret"]
        assert new_secret["checksum/config"] == old["checksum/config"]


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("processor.replica", "3", "additional properties 'replica' not allowed"),
        ("worker.autoscaling.keda.minReplicas", "1", "additional properties 'minReplicas' not allowed"),
        ("app.name", "my.app", "does not match pattern"),  # a dot would make {app}.tasks.{queue} ambiguous
        ("kafka.partitions", "0", "minimum"),
        ("processor.antiAffinity", "strict", "value must be one of"),
    ],
)
def test_values_schema_refuses_typos_and_bad_values(key: str, value: str, complaint: str) -> None:
    error = render_error(**{key: value})
    assert "values don't meet the specifications of the schema" in error
    assert complaint in error


def test_app_name_rule_of_the_schema_is_the_engine_rule() -> None:
    """The schema's app.name and queue patterns accept exactly what topology accepts as a name part."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    app_pattern = re.compile(schema["properties"]["app"]["properties"]["name"]["pattern"])
    queue_pattern = re.compile(schema["properties"]["app"]["properties"]["queues"]["items"]["pattern"])
    for name in ("shop", "Shop_2", "a-b", "x" * 100, "my.app", "", "x" * 101, "naïve", "a b"):
        try:
            topology.topic_name("inbox", name)
            engine_ok = True
        except ValueError:
            engine_ok = False
        assert bool(app_pattern.search(name)) == engine_ok, name
        assert bool(queue_pattern.search(name)) == engine_ok, name
