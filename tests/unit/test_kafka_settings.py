"""Kafka client settings: where they come from, which one wins, and that no secret is ever shown."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from orchestrator._kafka_config import KafkaConfigError, is_secret, read_properties
from orchestrator.settings import Settings

PASSWORD = "pw-Zq8v1xT3"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ORCHESTRATOR_* variable of the machine, and a cwd without an .env file."""
    for name in list(os.environ):
        if name.upper().startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _properties(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_variable_per_setting_with_underscores_for_dots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_PASSWORD", PASSWORD)

    settings = Settings()

    assert settings.kafka_client_settings() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.password": PASSWORD,
    }
    assert isinstance(settings.kafka["sasl.password"], SecretStr)


def test_a_json_object_and_per_setting_variables_combine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ORCHESTRATOR_KAFKA_CONFIG",
        '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "socket.keepalive.enable": true}',
    )
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")

    conf = Settings().kafka_client_settings()

    assert conf == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",  # the variable naming one setting wins over the JSON object
        "socket.keepalive.enable": "true",
    }


def test_an_env_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    _properties(
        clean_env / ".env",
        "ORCHESTRATOR_KAFKA__SASL_USERNAME=from-dotenv",
        f"ORCHESTRATOR_KAFKA__SASL_PASSWORD={PASSWORD}",
    )
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_USERNAME", "from-env")

    conf = Settings().kafka_client_settings()

    assert conf == {"sasl.username": "from-env", "sasl.password": PASSWORD}


def test_a_properties_file_is_the_base_that_variables_override(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    path = _properties(
        clean_env / "client.properties",
        "# written by orchestrator kafka start --secure",
        "bootstrap.servers=127.0.0.1:40001",
        "security.protocol=SASL_SSL",
        "sasl.mechanism=SCRAM-SHA-512",
        "sasl.username=orchestrator",
        f"sasl.password={PASSWORD}",
        "ssl.ca.location=/tmp/ca.pem",
    )
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(path))
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_USERNAME", "ops")

    settings = Settings()

    assert settings.bootstrap_servers == "127.0.0.1:40001"  # taken from the file: nothing else named one
    conf = settings.kafka_client_settings()
    assert conf["sasl.username"] == "ops"
    assert conf["sasl.password"] == PASSWORD
    assert conf["ssl.ca.location"] == "/tmp/ca.pem"
    assert "bootstrap.servers" not in conf  # Settings.bootstrap_servers is the one place for it


def test_an_explicit_bootstrap_wins_over_the_files(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    path = _properties(clean_env / "c.properties", "bootstrap.servers=file:1")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(path))
    assert Settings().bootstrap_servers == "file:1"
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__BOOTSTRAP_SERVERS", "env-kafka:1")
    assert Settings().bootstrap_servers == "env-kafka:1"
    monkeypatch.setenv("ORCHESTRATOR_BOOTSTRAP_SERVERS", "env:1")
    assert Settings().bootstrap_servers == "env:1"
    assert Settings(bootstrap_servers="kwarg:1").bootstrap_servers == "kwarg:1"


def test_settings_passed_in_code_replace_the_environments(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__CLIENT_ID", "from-env")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SECURITY_PROTOCOL", "SSL")
    path = _properties(clean_env / "c.properties", "client.rack=from-file", "client.id=from-file")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(path))

    conf = Settings(kafka={"client.id": "from-code"}).kafka_client_settings()

    # Like any field given in code, `kafka` replaces the variables' value; the file stays the base.
    assert conf == {"client.rack": "from-file", "client.id": "from-code"}


def test_properties_file_syntax(tmp_path: Path) -> None:
    path = _properties(
        tmp_path / "p.properties",
        "! a comment",
        "  # another",
        "",
        "a.b = spaced",
        "c.d: colon",
        "e.f whitespace",
        "sasl.oauthbearer.extensions=k1=v1,\\",
        "    k2=v2",
        "ssl.ca.location=C:\\certs\\ca.pem",
    )
    assert read_properties(path) == {
        "a.b": "spaced",
        "c.d": "colon",
        "e.f": "whitespace",
        "sasl.oauthbearer.extensions": "k1=v1,k2=v2",
        "ssl.ca.location": "C:\\certs\\ca.pem",
    }


def test_a_missing_properties_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(tmp_path / "nope.properties"))
    with pytest.raises(ValidationError, match=r"cannot read the Kafka client properties file .*nope\.prop"):
        Settings()


def test_a_line_that_is_no_setting_is_named_without_its_text(tmp_path: Path) -> None:
    path = _properties(tmp_path / "bad.properties", "a=1", f"={PASSWORD}")
    with pytest.raises(KafkaConfigError, match=r"bad\.properties:2: expected key=value") as raised:
        read_properties(path)
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("isolation.level", "aborted transactions"),
        ("enable.auto.commit", "committed with the state"),
        ("transactional.id", "transactional id"),
        ("partitioner", "murmur2"),
    ],
)
def test_settings_the_engine_relies_on_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, key: str, reason: str
) -> None:
    monkeypatch.setenv(f"ORCHESTRATOR_KAFKA__{key.replace('.', '_').upper()}", "x")
    with pytest.raises(ValidationError, match=reason):
        Settings()


def test_a_java_setting_gets_the_librdkafka_equivalent_and_its_value_is_not_quoted(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required password='{PASSWORD}';"
    path = _properties(clean_env / "java.properties", f"sasl.jaas.config={jaas}")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(path))

    with pytest.raises(ValidationError, match=r"sasl\.username and sasl\.password") as raised:
        Settings()

    assert PASSWORD not in str(raised.value)


def test_a_misspelt_nested_variable_is_explained_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL__PASSWORD", PASSWORD)
    with pytest.raises(ValidationError, match="ORCHESTRATOR_KAFKA__SASL_MECHANISM") as raised:
        Settings()
    assert PASSWORD not in str(raised.value)


def test_broken_json_is_refused_without_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG", f'{{"sasl.password": "{PASSWORD}"')
    with pytest.raises(Exception, match="kafka") as raised:
        Settings()
    assert PASSWORD not in str(raised.value)


def test_no_rendering_of_the_settings_shows_a_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_USERNAME", "ann")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET", PASSWORD + "2")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SSL_KEY_PASSWORD", PASSWORD + "3")
    monkeypatch.setenv("ORCHESTRATOR_KAFKA__SSL_KEY_PEM", PASSWORD + "4")
    settings = Settings()

    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings %s / %r", settings, settings)
    dumps = [settings.model_dump_json(), str(settings.model_dump())]
    shown = [repr(settings), str(settings), *dumps, caplog.text]

    for text in shown:
        assert PASSWORD not in text
        assert "ann" in text  # a user name is no secret, and helps whoever reads the log


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.passphrase",
    ],
)
def test_librdkafkas_sensitive_properties_are_secrets(key: str) -> None:
    assert is_secret(key)


@pytest.mark.parametrize(
    "key", ["sasl.username", "ssl.ca.location", "sasl.oauthbearer.token.endpoint.url", "ssl.certificate.pem"]
)
def test_paths_names_and_public_material_are_shown(key: str) -> None:
    assert not is_secret(key)
