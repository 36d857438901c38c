"""The dashboard the control plane serves at ``/ui``: plain HTML and JS, live data
by server-sent events.

Only the cluster admin may look: the login trades the admin's key for a session
cookie (HttpOnly, SameSite=Strict, path /ui), and every request checks that the
key behind the session is still live, so revoking it ends the session. The
event stream asks each node for its status and new log entries with the
control plane's own observer key (``observe`` scope: status and logs, nothing
else), never the admin's: a node's advertised URL is the node's to choose, and
the admin's key must not travel there.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

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

T = TypeVar("T")
COOKIE = "edgerun_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 256
TICK_S = 1.0
NODE_TIMEOUT_S = 2.0
MAX_NODE_ANSWER = 8 << 20
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


Endpoint = Callable[[Request], Awaitable[Response]]
UI_ROUTES: tuple[tuple[str, str, bool, str], ...] = (
    ("GET", "/ui", True, "dashboard"),
    ("GET", "/ui/", True, "dashboard"),
    ("GET", "/ui/logs", True, "request_page"),
    ("GET", "/ui/events", True, "events"),
    ("GET", "/ui/api/logs", True, "logs"),
    ("GET", "/ui/login", False, "login_page"),
    ("POST", "/ui/login", False, "login"),
    ("POST", "/ui/logout", False, "logout"),
    ("GET", "/ui/static/{name}", False, "static"),
)
"""Method, path, whether it needs the cluster admin's session, and the handler."""


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
        """Every route of the dashboard: those with a session need go through
        :meth:`_guarded`, the one place a session is checked."""
        return [
            Route(path, self._guarded(getattr(self, attr)) if session else getattr(self, attr),
                  methods=[method])
            for method, path, session, attr in UI_ROUTES
        ]  # fmt: skip

    def _guarded(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            if self._secret(request) is None:
                if request.url.path.startswith(("/ui/events", "/ui/api/")):
                    raise unauthorized("log in at /ui/login with the cluster admin's key")
                return RedirectResponse("/ui/login", status_code=303, headers=_HEADERS)
            return await endpoint(request)

        return guarded

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
    async def dashboard(self, request: Request) -> Response:
        return _html(_asset("dashboard.html"))

    async def request_page(self, request: Request) -> Response:
        return _html(_asset("logs.html"))

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
        secret = self._secret(request)
        assert secret is not None  # _guarded checked it
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
            snapshot = await self._tick(board, cursors)
            yield b"data: " + _encode(snapshot) + b"\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TICK_S)

    async def _tick(self, board: Board, cursors: dict[str, float]) -> dict[str, Any]:
        control = self.control
        nodes = control.node_views()
        live = [n for n in nodes if n.get("url") and n["state"] == "up" and not n["revoked"]]
        now = time.time()
        answers = await asyncio.gather(
            *(self._node(n["url"], cursors.get(n["name"], now - 60.0)) for n in live)
        )
        statuses: dict[str, dict[str, Any] | None] = {}
        entries: dict[str, list[dict[str, Any]]] = {}
        for node, (status, logs) in zip(live, answers, strict=True):
            statuses[node["name"]] = status
            if logs is not None:
                entries[node["name"]], until = logs
                if len(entries[node["name"]]) >= 1000:
                    cursors[node["name"]] = now  # too busy to read all: sample, skip ahead
                elif until is not None:
                    cursors[node["name"]] = until
        functions = control.registry.list_functions(limit=200)
        return board.update(now, nodes, statuses, entries, functions)

    async def _node(
        self, url: str, since: float
    ) -> tuple[dict[str, Any] | None, tuple[list[dict[str, Any]], float | None] | None]:
        """The node's status and its entries logged since ``since`` with the time up to
        which they are complete (None for what did not answer well)."""
        status, logs = await asyncio.gather(
            self._get(f"{url}/v1/status", {}),
            self._get(f"{url}/v1/logs", {"since": repr(since), "limit": "1000", "output": "0"}),
        )
        return _json(status, dict), _logs(logs)

    async def _get(self, url: str, params: dict[str, str]) -> bytes | None:
        """A node's answer with the observer key: at most MAX_NODE_ANSWER bytes within
        NODE_TIMEOUT_S, or None."""
        assert self.client is not None
        auth = {"authorization": f"Bearer {self.control.observer_secret}"}
        try:
            async with asyncio.timeout(NODE_TIMEOUT_S):
                req = self.client.build_request("GET", url, params=params, headers=auth)
                resp = await self.client.send(req, stream=True)
                try:
                    if resp.status_code != 200:
                        return None
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_NODE_ANSWER:
                            return None
                    return bytes(body)
                finally:
                    await resp.aclose()
        except (httpx.HTTPError, TimeoutError):
            return None

    async def logs(self, request: Request) -> Response:
        """One request's entries from every node (the errors table links here)."""
        request_id = request.query_params.get("request_id", "")
        if not request_id or len(request_id) > 64:
            raise ApiError(400, "BadRequest", "pass request_id (at most 64 characters)")
        found: list[dict[str, Any]] = []
        live = [n for n in self.control.node_views() if n.get("url") and n["state"] == "up"]
        answers = await asyncio.gather(
            *(self._get(f"{n['url']}/v1/logs", {"request_id": request_id}) for n in live)
        )
        for answer in answers:
            got = _logs(answer)
            if got is not None:
                found += got[0]
        unique = {(e["node"], e["request_id"], e["at"]): e for e in found}
        return json_response({"logs": sorted(unique.values(), key=lambda e: e["at"])})


def _json(answer: bytes | None, kind: type[T]) -> T | None:
    """A node's JSON answer of the expected shape, or None (a node is not trusted to
    answer well: it may be down, slow, or not a node at all)."""
    if answer is None:
        return None
    try:
        body = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, kind) else None


def _logs(answer: bytes | None) -> tuple[list[dict[str, Any]], float | None] | None:
    body = _json(answer, dict)
    if body is None:
        return None
    logs, until = body.get("logs"), body.get("until")
    if not isinstance(logs, list) or not all(
        isinstance(e, dict) and isinstance(e.get("at"), int | float) for e in logs
    ):
        return None
    return logs, float(until) if isinstance(until, int | float) else None


def _html(body: bytes) -> Response:
    return Response(body, media_type="text/html; charset=utf-8", headers=_HEADERS)
