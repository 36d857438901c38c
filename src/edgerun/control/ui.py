"""The dashboard the control plane serves at ``/ui``: plain HTML and JS, live data
by server-sent events.

Only the cluster admin may look: the login trades the admin's key for a session
cookie (HttpOnly, SameSite=Strict, path /ui), and every request checks that the
key behind the session is still live, so revoking it ends the session. The
event stream asks each node for its status and new log entries with that same
key, so the dashboard sees exactly what the admin's key may see, and nothing
the control plane holds for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from edgerun.control.dashboard import Board
from edgerun.errors import ApiError, forbidden, unauthorized
from edgerun.http import decode_json, json_response, read_body

if TYPE_CHECKING:
    from edgerun.control.app import ControlApp

COOKIE = "edgerun_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 256
TICK_S = 1.0
NODE_TIMEOUT_S = 2.0
_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "logs.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_encode = msgspec.json.Encoder().encode


class Login(msgspec.Struct, forbid_unknown_fields=True):
    key: str


@dataclass
class _Session:
    secret: str
    expires: float


def _asset(name: str) -> bytes:
    return (resources.files("edgerun.control") / "ui_static" / name).read_bytes()


class Ui:
    def __init__(self, control: ControlApp) -> None:
        self.control = control
        self._sessions: dict[str, _Session] = {}
        self.stop = asyncio.Event()
        """Set when the server stops: every event stream ends at once."""
        self.client: httpx.AsyncClient | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/ui", self._page("dashboard.html")),
            Route("/ui/", self._page("dashboard.html")),
            Route("/ui/logs", self._page("logs.html")),
            Route("/ui/login", self.login_page, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/events", self.events),
            Route("/ui/api/logs", self.logs),
            Route("/ui/static/{name}", self.static),
        ]

    # --- sessions ----------------------------------------------------------
    def _secret(self, request: Request) -> str | None:
        """The live admin key behind the request's session, if any."""
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        if session is None or session.expires < time.time():
            return None
        principal = self.control.accounts.keyring.principal(session.secret)
        if principal is None or not principal.is_cluster_admin:
            return None
        return session.secret

    def _require(self, request: Request) -> str:
        secret = self._secret(request)
        if secret is None:
            raise unauthorized("log in at /ui/login with the cluster admin's key")
        return secret

    async def login_page(self, request: Request) -> Response:
        return _html(_asset("login.html"))

    async def login(self, request: Request) -> Response:
        body: Login = decode_json(await read_body(request, 4096, 10.0), Login)
        principal = self.control.accounts.keyring.principal(body.key.strip())
        if principal is None:
            raise unauthorized("that key is not a live key of this cluster")
        if not principal.is_cluster_admin:
            raise forbidden("the dashboard is for the cluster admin's key only")
        now = time.time()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]  # the oldest
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = _Session(body.key.strip(), now + SESSION_TTL_S)
        resp = json_response({"ok": True})
        resp.set_cookie(
            COOKIE,
            sid,
            max_age=int(SESSION_TTL_S),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(self, request: Request) -> Response:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        resp = json_response({"ok": True})
        resp.delete_cookie(COOKIE, path="/ui")
        return resp

    # --- pages -------------------------------------------------------------
    def _page(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def page(request: Request) -> Response:
            if self._secret(request) is None:
                return RedirectResponse("/ui/login", status_code=303, headers=_HEADERS)
            return _html(_asset(name))

        return page

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return json_response(
                {"error": {"type": "NotFound", "message": "no such file"}}, status=404
            )
        return Response(_asset(name), media_type=_STATIC[name], headers=_HEADERS)

    # --- data --------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        """One snapshot a second while the page is open (``text/event-stream``)."""
        secret = self._require(request)
        return StreamingResponse(
            self._stream(request, secret),
            media_type="text/event-stream",
            headers={**_HEADERS, "x-accel-buffering": "no"},
        )

    async def _stream(self, request: Request, secret: str) -> AsyncIterator[bytes]:
        board = Board()
        cursors: dict[str, float] = {}
        while not self.stop.is_set():
            if self._secret(request) != secret:
                yield b"event: logout\ndata: {}\n\n"
                return
            snapshot = await self._tick(board, cursors, secret)
            yield b"data: " + _encode(snapshot) + b"\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TICK_S)

    async def _tick(self, board: Board, cursors: dict[str, float], secret: str) -> dict[str, Any]:
        control = self.control
        nodes = control.node_views()
        live = [n for n in nodes if n.get("url") and not n.get("revoked")]
        now = time.time()
        answers = await asyncio.gather(
            *(self._node(n["url"], secret, cursors.get(n["name"], now - 60.0)) for n in live)
        )
        statuses: dict[str, dict[str, Any] | None] = {}
        entries: dict[str, list[dict[str, Any]]] = {}
        for node, (status, logs) in zip(live, answers, strict=True):
            statuses[node["name"]] = status
            if logs is not None:
                entries[node["name"]] = logs
                if len(logs) >= 1000:
                    cursors[node["name"]] = now  # too busy to read all: sample, skip ahead
                elif logs:
                    cursors[node["name"]] = max(float(e["at"]) for e in logs)
                else:
                    cursors.setdefault(node["name"], now - 60.0)
        functions = control.registry.list_functions(limit=200)
        return board.update(now, nodes, statuses, entries, functions)

    async def _node(
        self, url: str, secret: str, since: float
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
        assert self.client is not None
        auth = {"authorization": f"Bearer {secret}"}
        status_call = self.client.get(f"{url}/v1/status", headers=auth, timeout=NODE_TIMEOUT_S)
        logs_call = self.client.get(
            f"{url}/v1/logs",
            params={"since": repr(since), "limit": "1000"},
            headers=auth,
            timeout=NODE_TIMEOUT_S,
        )
        answers = await asyncio.gather(status_call, logs_call, return_exceptions=True)
        status = logs = None
        if isinstance(answers[0], httpx.Response) and answers[0].status_code == 200:
            status = answers[0].json()
        if isinstance(answers[1], httpx.Response) and answers[1].status_code == 200:
            logs = answers[1].json()["logs"]
        return status, logs

    async def logs(self, request: Request) -> Response:
        """One request's entries from every node (the errors table links here)."""
        secret = self._require(request)
        request_id = request.query_params.get("request_id", "")
        if not request_id or len(request_id) > 64:
            raise ApiError(400, "BadRequest", "pass request_id (at most 64 characters)")
        assert self.client is not None
        found: list[dict[str, Any]] = []
        live = [n for n in self.control.node_views() if n.get("url") and n["state"] == "up"]
        answers = await asyncio.gather(
            *(
                self.client.get(
                    f"{n['url']}/v1/logs",
                    params={"request_id": request_id},
                    headers={"authorization": f"Bearer {secret}"},
                    timeout=NODE_TIMEOUT_S,
                )
                for n in live
            ),
            return_exceptions=True,
        )
        for resp in answers:
            if isinstance(resp, httpx.Response) and resp.status_code == 200:
                found += resp.json()["logs"]
        unique = {(e["node"], e["request_id"], e["at"]): e for e in found}
        return json_response({"logs": sorted(unique.values(), key=lambda e: e["at"])})


def _html(body: bytes) -> Response:
    return Response(body, media_type="text/html; charset=utf-8", headers=_HEADERS)
