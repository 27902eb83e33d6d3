"""Configuration read from the environment (``ORCHESTRATOR_*``) or an ``.env`` file.

One flat settings object is enough for the few values every component shares (where Kafka is, how the
topics are laid out); per-component knobs live in small frozen dataclasses next to the component.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Values shared by the client, the processors, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", env_file=".env", extra="ignore")

    bootstrap_servers: str = Field(
        default="127.0.0.1:19092", description="Kafka bootstrap servers (host:port,...)."
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
    max_payload_bytes: int = Field(
        default=512 * 1024,
        description="Largest encoded input/result accepted; larger ones are refused with a clear error.",
    )


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit keyword overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
