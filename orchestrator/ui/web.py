"""The web UI's routes: HTML pages for people, the same data as JSON under ``/api`` for scripts.

``create_app(app, runs)`` builds it; ``runs`` is whatever answers `RunQuery` (the changelog stand-in now,
the processors' fan-out query later), injected so that swapping it touches no route. Pages are rendered
on the server from Jinja templates in this package; the little JavaScript there is (polling, confirm
dialogs) is ``static/ui.js``, and every page works without it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from orchestrator._engine import audit
from orchestrator._engine.queries.model import RunFilter, RunQuery
from orchestrator._engine.tracebacks import by_attempt
from orchestrator._engine.unreadable import Unreadable
from orchestrator.app import App
from orchestrator.ui import render
from orchestrator.ui.auth import COOKIE, Auth, Role
from orchestrator.ui.filters import FilterError, parse_filter
from orchestrator.ui.guard import Guard
from orchestrator.ui.metrics import UIMetrics
from orchestrator.ui.operations import Operations
from orchestrator.ui.settings import UISettings
from orchestrator.ui.timeline import layout

HERE = Path(__file__).parent
ACTIONS = ("cancel", "signal", "resume", "rerun")
BULK = {"cancel": ("running", "parked"), "resume": ("parked",), "rerun": ("failed",)}
"""Bulk actions and the run statuses each applies to (a run in another status is left out of the count)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class UI:
    """The state the routes share: the App, the run query, the operations, auth, templates."""

    def __init__(self, app: App, runs: RunQuery, settings: UISettings, ops: Operations) -> None:
        self.app = app
        self.runs = runs
        self.settings = settings
        self.ops = ops
        self.auth = Auth(settings)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        render.install(self.templates.env)

    # -- helpers -----------------------------------------------------------------------------------------
    def role(self, request: Request) -> Role:
        role: Role | None = request.state.role
        assert role is not None, "the guard lets no anonymous request through to a page"
        return role

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        role = self.role(request)
        base = {
            "app_name": self.app.name,
            "role": role.value,
            "can_act": role is Role.ADMIN,
            "signed_in": not self.auth.open,
            "csrf": self.auth.csrf_token(role),
            "poll_seconds": self.settings.poll_seconds,
            "now_ms": _now_ms(),
            "flash": request.query_params.get("done", ""),
        }
        return self.templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    async def form(self, request: Request) -> dict[str, str]:
        """An urlencoded form body, after its CSRF token was checked (403 otherwise)."""
        body = (await request.body()).decode()
        fields = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        if not self.auth.csrf_ok(self.role(request), fields.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
        return fields

    @staticmethod
    async def json_body(request: Request) -> dict[str, Any]:
        """A JSON object body. Only ``application/json``: a cross-site form cannot send that (CSRF)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send application/json")
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise HTTPException(400, f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "send a JSON object")
        return data

    def forget_runs(self) -> None:
        forget: Callable[[], None] | None = getattr(self.runs, "forget", None)
        if forget is not None:
            forget()

    async def matching_ids(self, flt: RunFilter, statuses: tuple[str, ...]) -> list[str]:
        """Every run the filter matches whose status is one of ``statuses``, newest first."""
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = await asyncio.to_thread(self.runs.list, flt, cursor, 500)
            ids.extend(r.run_id for r in page.runs if r.status in statuses)
            cursor = page.next_cursor
            if cursor is None:
                return ids

    async def act(self, action: str, run_id: str, fields: dict[str, Any]) -> None:
        if action not in ACTIONS:
            raise HTTPException(404, f"no action {action!r}")
        payload: Any = fields.get("payload")
        if action == "signal":
            if not fields.get("name"):
                raise HTTPException(400, "a signal needs a name")
            if isinstance(payload, str):
                try:
                    payload = json.loads(payload) if payload.strip() else None
                except ValueError as exc:
                    raise HTTPException(400, f"the payload is not JSON: {exc}") from None
        position = fields.get("from_position")
        await self.ops.act(
            action,
            run_id,
            reason=str(fields.get("reason") or f"{action} from the web UI"),
            signal=str(fields.get("name") or ""),
            payload=payload,
            from_position=int(position) if position not in (None, "") else None,
        )
        self.forget_runs()

    async def state_and_history(self, run_id: str, skipped: list[Unreadable]) -> tuple[Any, list[Any]]:
        """Both reads at once: each costs at least a second of the reader's fetch wait (measured), so a
        run page answers in about two seconds instead of three."""
        return await asyncio.gather(
            asyncio.to_thread(self.ops.state, run_id, skipped),
            asyncio.to_thread(self.ops.history, run_id, skipped),
        )

    # -- runs --------------------------------------------------------------------------------------------
    def _filter(self, request: Request) -> Any:
        try:
            return parse_filter(request.query_params, _now_ms()), ""
        except FilterError as exc:
            return parse_filter({}, _now_ms()), str(exc)

    async def runs_page(self, request: Request) -> Response:
        parsed, error = self._filter(request)
        cursor = request.query_params.get("cursor") or None
        try:
            page = await asyncio.to_thread(self.runs.list, parsed.filter, cursor, self.settings.page_size)
            total = await asyncio.to_thread(self.runs.count, parsed.filter)
        except ValueError as exc:  # a cursor from elsewhere
            raise HTTPException(400, str(exc)) from None
        template = "runs_rows.html" if request.url.path.endswith("/rows") else "runs.html"
        return self.page(
            request,
            template,
            status=400 if error else 200,
            parsed=parsed,
            error=error,
            page=page,
            total=total,
            cursor=cursor or "",
            workflows=sorted(self.app.workflows),
            statuses=["running", "compensating", "parked", "failed", "completed", "cancelled"],
        )

    async def api_runs(self, request: Request) -> Response:
        try:
            parsed = parse_filter(request.query_params, _now_ms())
            limit = int(request.query_params.get("limit", self.settings.page_size))
            cursor = request.query_params.get("cursor") or None
            page = await asyncio.to_thread(self.runs.list, parsed.filter, cursor, limit)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(
            {
                "runs": [r.to_json() for r in page.runs],
                "next_cursor": page.next_cursor,
                "missing_partitions": page.missing_partitions,
            }
        )

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        skipped: list[Unreadable] = []
        state, events = await self.state_and_history(run_id, skipped)
        if state is None and not events:
            raise HTTPException(404, f"no run {run_id!r} in app {self.app.name!r}")
        at = request.query_params.get("at")
        shown = state
        if at:
            try:
                seq = int(at)
            except ValueError:
                raise HTTPException(400, "at: an event's seq number") from None
            shown = await asyncio.to_thread(self.ops.state_at, events, run_id, seq)
            if shown is None:
                raise HTTPException(404, f"the run's history does not fold up to seq {seq}")
        timeline = layout(shown, _now_ms()) if shown is not None else None
        return self.page(
            request,
            "run.html",
            run_id=run_id,
            state=shown,
            live=state,
            at=at or "",
            timeline=timeline,
            events=[audit.event_json(e) for e in events],
            tracebacks=by_attempt(events),
            skipped=skipped,
        )

    async def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        skipped: list[Unreadable] = []
        state, events = await self.state_and_history(run_id, skipped)
        if state is None and not events:
            return JSONResponse({"error": f"no run {run_id!r}"}, 404)
        return JSONResponse(
            {
                "run": render.state_json(state, by_attempt(events)) if state is not None else None,
                "history": [audit.event_json(e) for e in events],
                "unreadable": [b.as_json() for b in skipped],
            }
        )

    async def run_action(self, request: Request) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        fields = await self.form(request)
        await self.act(action, run_id, fields)
        return RedirectResponse(f"/runs/{quote(run_id, safe='/')}?done={action}", 303)

    async def api_run_action(self, request: Request) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        await self.act(action, run_id, await self.json_body(request))
        return JSONResponse({"ok": True, "action": action, "run_id": run_id}, 202)

    async def bulk(self, request: Request) -> Response:
        """Step one: show how many runs the action would touch. Step two (``confirm`` = that count):
        act on them; if the count changed meanwhile, ask again with the new count."""
        fields = await self.form(request)
        action = fields.get("action", "")
        if action not in BULK:
            raise HTTPException(400, f"bulk action: one of {', '.join(BULK)}")
        try:
            parsed = parse_filter(fields, _now_ms())
        except FilterError as exc:
            raise HTTPException(400, str(exc)) from None
        ids = await self.matching_ids(parsed.filter, BULK[action])
        confirm = fields.get("confirm")
        if confirm is None or confirm != str(len(ids)):
            changed = confirm is not None
            return self.page(
                request,
                "confirm.html",
                action=action,
                parsed=parsed,
                ids=ids,
                statuses=BULK[action],
                changed=changed,
            )
        for run_id in ids:
            await self.act(action, run_id, {"reason": f"bulk {action} from the web UI"})
        return self.page(request, "done.html", action=action, ids=ids)

    async def api_bulk(self, request: Request) -> Response:
        data = await self.json_body(request)
        action = data.get("action")
        if action not in BULK:
            return JSONResponse({"error": f"action: one of {', '.join(BULK)}"}, 400)
        try:
            parsed = parse_filter({k: str(v) for k, v in (data.get("filter") or {}).items()}, _now_ms())
        except FilterError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        ids = await self.matching_ids(parsed.filter, BULK[action])
        if data.get("confirm_count") != len(ids):
            return JSONResponse({"count": len(ids), "error": "confirm with confirm_count = count"}, 409)
        for run_id in ids:
            await self.act(action, run_id, {"reason": f"bulk {action} from the web UI API"})
        return JSONResponse({"action": action, "run_ids": ids}, 202)

    # -- dead letters, schedules, queues -----------------------------------------------------------------
    async def dlq_page(self, request: Request) -> Response:
        letters = await asyncio.to_thread(self.ops.dead_letters)
        offset = request.path_params.get("offset")
        if offset is not None:
            chosen = [(o, d) for o, d in letters.letters if o == int(offset)]
            if not chosen:
                raise HTTPException(404, f"no readable dead letter at offset {offset}")
            return self.page(request, "letter.html", offset=chosen[0][0], letter=chosen[0][1])
        return self.page(request, "dlq.html", letters=letters.letters, skipped=letters.skipped)

    async def redrive(self, request: Request) -> Response:
        body = (await request.body()).decode()
        pairs = parse_qs(body, keep_blank_values=True)
        if not self.auth.csrf_ok(self.role(request), (pairs.get("csrf") or [""])[-1]):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
        offsets = {int(o) for o in pairs.get("offset", []) if o.isdigit()}
        count = await asyncio.to_thread(self.ops.redrive, offsets)
        return RedirectResponse(f"/dlq?done=redrove+{count}", 303)

    async def api_dlq(self, request: Request) -> Response:
        letters = await asyncio.to_thread(self.ops.dead_letters)
        return JSONResponse(
            {
                "letters": [render.letter_json(o, d) for o, d in letters.letters],
                "unreadable": [b.as_json() for b in letters.skipped],
            }
        )

    async def api_redrive(self, request: Request) -> Response:
        data = await self.json_body(request)
        offsets = data.get("offsets")
        if not isinstance(offsets, list) or not all(isinstance(o, int) for o in offsets):
            return JSONResponse({"error": "offsets: a list of integers"}, 400)
        count = await asyncio.to_thread(self.ops.redrive, set(offsets))
        return JSONResponse({"redriven": count}, 202)

    async def schedules_page(self, request: Request) -> Response:
        skipped: list[Unreadable] = []
        schedules = await asyncio.to_thread(self.ops.schedules, skipped)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"schedules": schedules, "unreadable": [b.as_json() for b in skipped]})
        return self.page(request, "schedules.html", schedules=schedules, skipped=skipped)

    async def schedule_action(self, request: Request) -> Response:
        workflow, action = request.path_params["workflow"], request.path_params["action"]
        if action not in ("pause", "resume"):
            raise HTTPException(404, f"no schedule action {action!r}")
        api = request.url.path.startswith("/api/")
        if api:
            await self.json_body(request)
        else:
            await self.form(request)
        await self.ops.pause_schedule(workflow, action == "pause")
        if api:
            return JSONResponse({"workflow": workflow, "paused": action == "pause"}, 202)
        return RedirectResponse(f"/schedules?done={action}d+{quote(workflow)}", 303)

    async def queues_page(self, request: Request) -> Response:
        skipped: list[Unreadable] = []

        def read() -> Any:
            states = audit.live_states(self.app, on_unreadable=skipped.append)
            return self.ops.queues(states.values())

        reports, workers = await asyncio.gather(asyncio.to_thread(read), asyncio.to_thread(self.ops.workers))
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"queues": [render.queue_json(q) for q in reports], "workers": render.workers_json(workers)}
            )
        return self.page(request, "queues.html", queues=reports, workers=workers, skipped=skipped)

    # -- signing in --------------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/runs")
        if request.method == "GET":
            return self.templates.TemplateResponse(
                request, "login.html", {"app_name": self.app.name, "next": nxt, "error": ""}
            )
        body = (await request.body()).decode()
        fields = {k: v[-1] for k, v in parse_qs(body).items()}
        role = self.auth.role_for_token(fields.get("token", "")) if not self.auth.open else Role.ADMIN
        target = fields.get("next") or "/runs"
        if not target.startswith("/") or target.startswith("//"):
            target = "/runs"  # never an open redirect to another site
        if role is None:
            return self.templates.TemplateResponse(
                request,
                "login.html",
                {"app_name": self.app.name, "next": target, "error": "That token is not valid."},
                status_code=401,
            )
        response = RedirectResponse(target, 303)
        if not self.auth.open:
            response.set_cookie(
                COOKIE,
                self.auth.session_cookie(role),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response


def _routes(ui: UI) -> list[Route | Mount]:
    def home(request: Request) -> Response:
        return RedirectResponse("/runs", 303)

    def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return [
        Route("/", home),
        Route("/healthz", healthz),
        Route("/login", ui.login, methods=["GET", "POST"]),
        Route("/logout", ui.logout, methods=["POST"]),
        Route("/runs", ui.runs_page),
        Route("/runs/rows", ui.runs_page),
        Route("/runs/bulk", ui.bulk, methods=["POST"]),
        Route("/runs/{run_id:path}", ui.run_page),
        Route("/runs/{run_id:path}/{action}", ui.run_action, methods=["POST"]),
        Route("/dlq", ui.dlq_page),
        Route("/dlq/redrive", ui.redrive, methods=["POST"]),
        Route("/dlq/{offset:int}", ui.dlq_page),
        Route("/schedules", ui.schedules_page),
        Route("/schedules/{workflow}/{action}", ui.schedule_action, methods=["POST"]),
        Route("/queues", ui.queues_page),
        Route("/api/runs", ui.api_runs),
        Route("/api/runs/bulk", ui.api_bulk, methods=["POST"]),
        Route("/api/runs/{run_id:path}", ui.api_run),
        Route("/api/runs/{run_id:path}/{action}", ui.api_run_action, methods=["POST"]),
        Route("/api/dlq", ui.api_dlq),
        Route("/api/dlq/redrive", ui.api_redrive, methods=["POST"]),
        Route("/api/schedules", ui.schedules_page),
        Route("/api/schedules/{workflow}/{action}", ui.schedule_action, methods=["POST"]),
        Route("/api/queues", ui.queues_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def create_app(
    app: App,
    runs: RunQuery,
    settings: UISettings | None = None,
    *,
    ops: Operations | None = None,
    metrics: UIMetrics | None = None,
) -> Starlette:
    """The UI for ``app``, listing runs through ``runs``. ``metrics`` gets every request observed."""
    settings = settings or UISettings()
    operations = ops or Operations(app)
    ui = UI(app, runs, settings, operations)
    routes = _routes(ui)
    paths: dict[Any, str] = {}
    for route in routes:
        paths.setdefault(route.endpoint if isinstance(route, Route) else route.app, route.path)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> Any:
        try:
            yield
        finally:
            await operations.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, exc.status_code)
        if request.state.role is None:
            return JSONResponse({"error": exc.detail}, exc.status_code)
        return ui.page(request, "message.html", status=exc.status_code, message=exc.detail)

    def route_of(endpoint: Any) -> str:
        return paths.get(endpoint, "(unmatched)")

    # The guard runs inside Starlette's error handling and outside the router: it sees the matched route.
    guard = Middleware(Guard, auth=ui.auth, metrics=metrics or UIMetrics(), route_of=route_of)
    web = Starlette(
        routes=routes, middleware=[guard], lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    web.state.ui = ui
    return web
