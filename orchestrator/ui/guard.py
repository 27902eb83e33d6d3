"""The ASGI layer in front of every route: who the caller is, whether they may, and the request metrics.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: it sees the matched route (``scope["endpoint"]``,
set by the router on the shared scope) after the app answers, so the metrics label is the route template.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.ui.auth import COOKIE, Auth, Role
from orchestrator.ui.metrics import UIMetrics

PUBLIC = ("/login", "/static/", "/healthz")
"""Paths anyone may reach (to sign in, and the CSS/JS of the sign-in page)."""


SECURITY_HEADERS = [
    # Scripts and styles from this server only (the timeline's positions are inline style attributes), no
    # framing (clickjacking an action button), no MIME sniffing, no run ids leaking in Referer headers.
    (
        b"content-security-policy",
        b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def _public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)


class Guard:
    def __init__(self, app: ASGIApp, auth: Auth, metrics: UIMetrics, route_of: Callable[[Any], str]) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        route = "(unmatched)"

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                route = "(refused)"
                await refusal(scope, receive, send_and_note)
                return
            await self.app(scope, receive, send_and_note)
            route = self.route_of(scope.get("endpoint"))
        finally:
            self.metrics.observe(route, status, time.perf_counter() - started)

    def _role(self, scope: Scope) -> Role | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        role = self.auth.role_for_header(headers.get("authorization"))
        if role is None and "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            jar.load(headers["cookie"])
            morsel = jar.get(COOKIE)
            role = self.auth.role_for_cookie(morsel.value if morsel else None)
        if role is None and self.auth.open:
            role = Role.ADMIN
        return role

    def _refusal(self, scope: Scope) -> Response | None:
        """The answer for a caller who may not do this (None: let the request through)."""
        path: str = scope["path"]
        api = path.startswith("/api/")
        role = self._role(scope)
        scope.setdefault("state", {})["role"] = role
        if _public(path):
            return None
        if role is None:
            if api:
                return JSONResponse(
                    {"error": "a bearer token is needed"}, 401, {"WWW-Authenticate": "Bearer"}
                )
            target = path + ("?" + scope["query_string"].decode() if scope.get("query_string") else "")
            return RedirectResponse(f"/login?next={quote(target)}", 303)
        if scope["method"] not in ("GET", "HEAD") and role is not Role.ADMIN and path != "/logout":
            message = "this token may only look: actions need the full token"
            return JSONResponse({"error": message}, 403) if api else PlainTextResponse(message, 403)
        return None
