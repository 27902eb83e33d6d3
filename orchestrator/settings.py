"""Configuration read from the environment (``ORCHESTRATOR_*``) or an ``.env`` file.

One flat settings object is enough for the few values every component shares (where Kafka is, how to
connect to it, how the topics are laid out); per-component knobs live in small frozen dataclasses next to
the component.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator import _kafka_config


class Settings(BaseSettings):
    """Values shared by the client, the processors, the workers and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_",
        env_file=".env",
        extra="ignore",
        env_nested_delimiter="__",  # ORCHESTRATOR_KAFKA__SASL_MECHANISM=... sets one Kafka setting
        populate_by_name=True,  # Settings(kafka={...}) as well as the ORCHESTRATOR_KAFKA* variables
        hide_input_in_errors=True,  # a validation error must not quote a password it was given
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        description="Kafka bootstrap servers (host:port,...); when unset, the bootstrap.servers of `kafka`.",
    )
    kafka: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("orchestrator_kafka", "orchestrator_kafka_config"),
        description=(
            "librdkafka settings every Kafka client of the engine gets (security.protocol, sasl.*, ssl.*, "
            "sasl.oauthbearer.*, client.id, ...): ORCHESTRATOR_KAFKA__SASL_MECHANISM=... (underscores for "
            "dots) or a JSON object in ORCHESTRATOR_KAFKA_CONFIG; over kafka_config_file. Secrets are "
            "SecretStr."
        ),
    )
    kafka_config_file: Path | None = Field(
        default=None,
        description=(
            "A librdkafka properties file (key=value lines, e.g. the client.properties of `orchestrator "
            "kafka start --secure` or a cloud provider's); `kafka` settings override its values."
        ),
    )
    partitions: int = Field(
        default=4,
        ge=1,
        description="Partitions of the run-keyed topics; fixed for an app's life (runs are placed by hash).",
    )
    replication_factor: int = Field(default=1, ge=1, description="Replication of every engine topic.")
    min_insync_replicas: int = Field(default=1, ge=1)
    state_dir: Path = Field(
        default=Path("var/state"), description="Where processors keep their RocksDB stores."
    )
    log_level: str = Field(
        default="INFO",
        description="Processor and worker log level (debug, info, warning, error); --log-level wins.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text (for people) or json (one object per line, for collectors); --log-format wins.",
    )
    max_payload_bytes: int = Field(
        default=512 * 1024,
        description="Largest encoded input/result accepted; larger ones are refused with a clear error.",
    )

    @field_validator("kafka", mode="before")
    @classmethod
    def _check_kafka(cls, value: Any) -> dict[str, str | SecretStr]:
        if not isinstance(value, dict):
            raise ValueError("Kafka settings must be a JSON object of librdkafka settings")
        return _kafka_config.normalize(value, "ORCHESTRATOR_KAFKA*")

    @model_validator(mode="after")
    def _merge_kafka_file(self) -> Settings:
        """Lay ``kafka`` over the properties file, and take the bootstrap servers from them if not set."""
        settings = dict(self.kafka)
        bootstrap = _kafka_config.pop_bootstrap(settings)
        if self.kafka_config_file is not None:
            path = self.kafka_config_file.expanduser()
            from_file = _kafka_config.normalize(_kafka_config.read_properties(path), str(path))
            file_bootstrap = _kafka_config.pop_bootstrap(from_file)
            bootstrap = bootstrap or file_bootstrap
            settings = from_file | settings
        if bootstrap and "bootstrap_servers" not in self.model_fields_set:
            self.bootstrap_servers = bootstrap
        self.kafka = settings
        return self

    def kafka_client_settings(self) -> dict[str, str]:
        """The ``kafka`` settings with their secrets revealed: only for the dict handed to librdkafka."""
        return {
            key: value.get_secret_value() if isinstance(value, SecretStr) else value
            for key, value in self.kafka.items()
        }


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit keyword overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
