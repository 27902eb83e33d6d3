"""Who may do what in the UI: bearer tokens, the sign-in cookie, CSRF tokens, and where it may listen.

Pure functions of the configured tokens, so they are tested without a server.

- An API call sends ``Authorization: Bearer <token>``. A browser signs in once with a token and gets a
  cookie (HttpOnly, SameSite=Strict) whose value is an HMAC keyed by that token: it holds no token, and
  changing the token signs every browser out.
- The full token may act; the read-only token only looks (actions answer 403).
- Actions are POSTs. Form posts carry a CSRF token (an HMAC of the session, so a page of another site
  cannot know it); API posts must be ``application/json``, which a cross-site form cannot send without a
  CORS preflight this server never grants. SameSite=Strict keeps the cookie off cross-site requests too.
- No token configured: every request may act, so the server must not be reachable from other machines:
  `check_bind` refuses any address but 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from pydantic import SecretStr

from orchestrator.ui.settings import UISettings

COOKIE = "orchestrator_ui"
LOCAL_HOST = "127.0.0.1"


class Role(StrEnum):
    ADMIN = "admin"  # may look and act
    READ = "read"  # may only look


class UIConfigError(ValueError):
    """The UI's settings do not allow what was asked (e.g. an open UI on a public address)."""


def check_bind(host: str, settings: UISettings) -> None:
    """Refuse to serve an open UI (no token) on anything but 127.0.0.1: anyone who reaches it could
    cancel runs and re-drive dead letters."""
    if settings.token is None and settings.read_token is None and host != LOCAL_HOST:
        raise UIConfigError(
            f"refusing to listen on {host}: no token is configured, so anyone reaching the UI could act on "
            f"runs. Set ORCHESTRATOR_UI__TOKEN (and optionally ORCHESTRATOR_UI__READ_TOKEN), or listen on "
            f"{LOCAL_HOST} only."
        )


def _secret(value: SecretStr | None) -> bytes | None:
    return value.get_secret_value().encode() if value is not None else None


class Auth:
    """Answers "which role is this request?" from a bearer token or a session cookie."""

    def __init__(self, settings: UISettings) -> None:
        self._tokens: dict[Role, bytes] = {}
        for role, value in ((Role.ADMIN, settings.token), (Role.READ, settings.read_token)):
            secret = _secret(value)
            if secret:
                self._tokens[role] = secret
        # Open mode has no token to key CSRF tokens with: a random key per server process does.
        self._open_key = secrets.token_bytes(32)

    @property
    def open(self) -> bool:
        """No token configured: everyone is an admin (and the server listens on 127.0.0.1 only)."""
        return not self._tokens

    def role_for_token(self, presented: str) -> Role | None:
        """The role a bearer token (or a token typed into the sign-in form) grants, or None."""
        given = presented.encode()
        found = None
        for role, secret in self._tokens.items():  # compare with every token: no timing hint at which
            if hmac.compare_digest(given, secret):
                found = found or role
        return found

    def role_for_header(self, header: str | None) -> Role | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return self.role_for_token(value.strip())

    def _key(self, role: Role) -> bytes:
        return hashlib.sha256(b"orchestrator-ui\0" + self._tokens[role]).digest()

    def session_cookie(self, role: Role) -> str:
        """The cookie value for a browser signed in as ``role``."""
        mac = hmac.new(self._key(role), b"session:" + role.value.encode(), hashlib.sha256).hexdigest()
        return f"{role.value}.{mac}"

    def role_for_cookie(self, value: str | None) -> Role | None:
        if not value or "." not in value:
            return None
        name, _, _ = value.partition(".")
        try:
            role = Role(name)
        except ValueError:
            return None
        if role not in self._tokens:
            return None
        return role if hmac.compare_digest(value, self.session_cookie(role)) else None

    def csrf_token(self, role: Role) -> str:
        """The token a form of a page served to ``role`` carries; only this server can make it."""
        key = self._open_key if self.open else self._key(role)
        return hmac.new(key, b"csrf:" + role.value.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, role: Role, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf_token(role))
