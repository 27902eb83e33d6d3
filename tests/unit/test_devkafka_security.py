"""The secured local broker's settings, secrets and certificates, checked without starting Java."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from orchestrator._devkafka import security
from orchestrator._devkafka.config import (
    BrokerConfig,
    DataDir,
    read_properties,
    server_properties,
    write_config_files,
)
from orchestrator._devkafka.security import SecureFiles


def _secured(tmp_path: Path) -> tuple[SecureFiles, security.Credentials, BrokerConfig]:
    files = SecureFiles(tmp_path)
    credentials = security.ensure_credentials(files)
    config = BrokerConfig(port=29092, controller_port=29093, tls=security.tls_settings(files, credentials))
    return files, credentials, config


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_are_made_once_kept_private_and_never_shown(tmp_path: Path) -> None:
    files, credentials, _ = _secured(tmp_path)

    assert security.ensure_credentials(files) == credentials  # the formatted SCRAM users stay valid
    assert _private(files.secrets)
    assert len(set(credentials.all_secrets())) == 3
    for secret in credentials.all_secrets():
        assert secret not in repr(credentials)
        assert secret not in security.redact(f"failed: {secret}!", credentials)


def test_secured_node_has_no_plaintext_listener(tmp_path: Path) -> None:
    _, credentials, config = _secured(tmp_path)
    props = server_properties(DataDir(tmp_path), config)

    assert props["listeners"] == "SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert "PLAINTEXT" not in props["listeners"] + props["listener.security.protocol.map"]
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert "User:orchestrator" in props["super.users"].split(";")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert credentials.broker_password in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert credentials.broker_password not in repr(config)


def test_server_properties_with_passwords_are_private(tmp_path: Path) -> None:
    _, _, config = _secured(tmp_path)
    layout = DataDir(tmp_path / "node")
    write_config_files(layout, config)

    assert _private(layout.server_properties)
    assert read_properties(layout.server_properties) == server_properties(layout, config)


def test_certificate_serves_loopback_and_authenticates_brokers(tmp_path: Path) -> None:
    files, credentials, _ = _secured(tmp_path)
    security.ensure_tls(files, credentials)

    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    key, cert, chain = pkcs12.load_key_and_certificates(
        files.keystore.read_bytes(), credentials.keystore_password.encode()
    )
    assert key is not None and cert is not None
    assert _private(files.keystore)
    cert.verify_directly_issued_by(ca)
    assert [c.subject for c in chain] == [ca.subject]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert b"PRIVATE KEY" not in files.ca.read_bytes()


def test_client_properties_carry_what_librdkafka_needs(tmp_path: Path) -> None:
    files, credentials, _ = _secured(tmp_path)
    config = security.client_config("127.0.0.1:1,127.0.0.1:3", files, credentials)
    security.write_client_properties(files, config)

    assert security.read_client_properties(files.client_properties) == config
    assert _private(files.client_properties)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "orchestrator"
    assert config["sasl.password"] == credentials.admin_password
    assert config["ssl.ca.location"] == str(files.ca)


def test_scram_users_are_added_at_format_time(tmp_path: Path) -> None:
    _, credentials, _ = _secured(tmp_path)
    arguments = security.scram_format_arguments(credentials)

    assert arguments[0::2] == ["--add-scram", "--add-scram"]
    assert f"SCRAM-SHA-512=[name=broker,password={credentials.broker_password}]" in arguments
    assert f"SCRAM-SHA-512=[name=orchestrator,password={credentials.admin_password}]" in arguments
