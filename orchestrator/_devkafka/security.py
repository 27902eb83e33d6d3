"""Secrets and TLS files of a secured local cluster, and the client properties the engine connects with.

A secured data dir gets, at its first start: random SCRAM passwords for the engine's admin user and for the
brokers themselves, a throwaway CA, one certificate for every node (127.0.0.1 and localhost, valid for both
server and client use: brokers present it to each other's controller listener), and ``client.properties``
for librdkafka. The CA's private key is never written: nothing else is ever signed with it, so a
certificate for another host cannot be forged from the files on disk. Every file holding a secret is
readable by its owner only, and no password is printed, logged or put in an error message.

Certificates are made with the ``cryptography`` package (pinned in ``pyproject.toml``) rather than
``openssl``/``keytool``, so the same code runs on any machine with the Python dependencies and needs no
parsing of tool output.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator._devkafka.config import LOOPBACK, SCRAM_MECHANISM, TlsSettings, write_private
from orchestrator._devkafka.errors import DevKafkaError

ADMIN_USER = "orchestrator"
"""The engine's admin: a super user, so the engine may create topics and use transactions without ACLs."""
BROKER_USER = "broker"
"""The brokers' own SCRAM identity on the shared SASL_SSL listener (replication, coordinators)."""
BROKER_CERT_CN = "orchestrator-devkafka-broker"
CERT_DAYS = 825
"""Long enough that a developer's data dir does not expire under them; a local dev CA, not production."""


@dataclass(frozen=True)
class Credentials:
    """Generated once per data dir (``secrets.json``, owner-only); ``repr`` shows no password."""

    admin_password: str = field(repr=False)
    broker_password: str = field(repr=False)
    keystore_password: str = field(repr=False)
    admin_user: str = ADMIN_USER
    broker_user: str = BROKER_USER

    def all_secrets(self) -> tuple[str, ...]:
        return (self.admin_password, self.broker_password, self.keystore_password)


@dataclass(frozen=True)
class SecureFiles:
    """Where a secured data dir keeps its secrets, its TLS files and the clients' properties."""

    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca(self) -> Path:
        """The CA certificate (public): clients' ``ssl.ca.location`` and the brokers' truststore."""
        return self.tls_dir / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.tls_dir / "broker.p12"

    @property
    def client_properties(self) -> Path:
        return self.root / "client.properties"


def _new_password() -> str:
    # URL-safe characters only: the password is quoted inside a JAAS line and a StorageTool argument.
    return secrets.token_urlsafe(24)


def ensure_credentials(files: SecureFiles) -> Credentials:
    """The data dir's credentials, generated on first use; later starts must reuse the formatted ones."""
    try:
        return Credentials(**json.loads(files.secrets.read_text(encoding="utf-8")))
    except FileNotFoundError:
        pass
    except (ValueError, TypeError) as exc:
        raise DevKafkaError(f"{files.secrets} is damaged ({type(exc).__name__}); use a new --dir.") from exc
    credentials = Credentials(_new_password(), _new_password(), _new_password())
    write_private(files.secrets, json.dumps(asdict(credentials), indent=2) + "\n")
    return credentials


def read_credentials(files: SecureFiles) -> Credentials | None:
    try:
        return Credentials(**json.loads(files.secrets.read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def ensure_tls(files: SecureFiles, credentials: Credentials) -> None:
    """Make the CA and the brokers' keystore once; every node of the data dir shares the certificate."""
    if files.ca.is_file() and files.keystore.is_file():
        return
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchestrator devkafka local CA")])
    ca_cert = (
        _base_builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CERT_CN)])
    names = [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    broker_cert = (
        _base_builder(broker_name, ca_name, broker_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    keystore = pkcs12.serialize_key_and_certificates(
        b"broker", broker_key, broker_cert, [ca_cert],
        serialization.BestAvailableEncryption(credentials.keystore_password.encode()),
    )  # fmt: skip
    files.tls_dir.mkdir(parents=True, exist_ok=True)
    files.keystore.write_bytes(b"")
    files.keystore.chmod(0o600)
    files.keystore.write_bytes(keystore)
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))


def _base_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def tls_settings(files: SecureFiles, credentials: Credentials) -> TlsSettings:
    """What ``server.properties`` of every node of a secured data dir is told."""
    return TlsSettings(
        keystore=files.keystore,
        truststore=files.ca,
        keystore_password=credentials.keystore_password,
        broker_user=credentials.broker_user,
        broker_password=credentials.broker_password,
        # The certificate's subject is the brokers' identity on the mutual-TLS controller listener.
        super_users=(
            f"User:{credentials.admin_user}",
            f"User:{credentials.broker_user}",
            f"User:CN={BROKER_CERT_CN}",
        ),
    )


def scram_format_arguments(credentials: Credentials) -> list[str]:
    """``StorageTool format`` arguments creating both SCRAM users in the new cluster's first metadata.

    Brokers authenticate to each other with SCRAM before any client could create a user, so the users
    must exist from the start (KIP-900).
    """
    arguments: list[str] = []
    for user, password in (
        (credentials.broker_user, credentials.broker_password),
        (credentials.admin_user, credentials.admin_password),
    ):
        arguments += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
    return arguments


def client_config(bootstrap: str, files: SecureFiles, credentials: Credentials) -> dict[str, str]:
    """librdkafka settings for the engine's producers, consumers and admin clients on a secured cluster."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.username": credentials.admin_user,
        "sasl.password": credentials.admin_password,
        "ssl.ca.location": str(files.ca),
        "ssl.endpoint.identification.algorithm": "https",
    }


def write_client_properties(files: SecureFiles, config: dict[str, str]) -> None:
    header = [
        "# librdkafka settings for the engine on this secured local cluster",
        "# (orchestrator kafka start --secure).",
        "# Holds the admin password: readable by its owner only. Regenerated on every start.",
    ]
    lines = [*header, *(f"{key}={value}" for key, value in config.items())]
    write_private(files.client_properties, "\n".join(lines) + "\n")


def read_client_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines of a client properties file (``#`` comments), values taken verbatim."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def redact(text: str, credentials: Credentials | None) -> str:
    """``text`` with every password of ``credentials`` replaced, for errors that quote tool output."""
    if credentials is None:
        return text
    for secret in credentials.all_secrets():
        text = text.replace(secret, "***")
    return text
