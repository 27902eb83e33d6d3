"""The web UI's settings: its tokens, read from ``ORCHESTRATOR_UI__*`` (or ``.env``).

A settings class of its own rather than fields on `orchestrator.Settings`: only ``orchestrator ui`` reads
them, and a processor or worker should never hold the UI's tokens.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class UISettings(BaseSettings):
    """``ORCHESTRATOR_UI__TOKEN`` may act (cancel, signal, re-drive ...); ``ORCHESTRATOR_UI__READ_TOKEN``
    may only look. With neither, the UI is open to whoever reaches it, so it binds only to 127.0.0.1."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_UI__", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    token: SecretStr | None = Field(default=None, description="Bearer token that may look and act.")
    read_token: SecretStr | None = Field(default=None, description="Bearer token that may only look.")
    poll_seconds: float = Field(
        default=3.0, gt=0, description="How often an open runs page or run page refreshes itself."
    )
    page_size: int = Field(default=50, ge=1, le=500, description="Runs per page.")
