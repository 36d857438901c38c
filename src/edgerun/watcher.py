"""What keeps ``edgerun up``'s nodes running: it reports a node that exits (its
name, exit status and last log lines), restarts it as :mod:`edgerun.keeper`
says, and takes ``edgerun stop NODE`` / ``edgerun start NODE`` from other shells
through a Unix socket (mode 0600) in the cluster's data folder.

Only the main thread starts or signals node processes (:meth:`Watcher.run`);
the socket's threads read a request, hand it to the main thread and wait for
its answer. The protocol is one JSON line each way: ``{"op": "stop"|"start"|
"status", "node": NAME}`` and ``{"ok": true, "message": ...}`` or ``{"ok":
false, "error": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
from rich.markup import escape

from edgerun.cluster import LocalCluster
from edgerun.keeper import Backoff, NodeState, RestartPolicy

SHUTDOWN_GRACE_S = 0.25
"""What ``edgerun up``'s nodes give requests in flight when they are told to stop
(NodeConfig.shutdown_grace_s; 5 s elsewhere): a Ctrl-C there means now."""
SOCKET_NAME = "up.sock"
MAX_REQUEST_BYTES = 4096
READ_DEADLINE_S = 2.0
STOP_KILL_AFTER_S = 10.0  # a node that ignores SIGTERM this long is killed
START_HEALTHY_S = 60.0
MAX_CONNECTIONS = 16
LOG_LINES = 10


class Request(msgspec.Struct, forbid_unknown_fields=True):
    op: Literal["stop", "start", "status"]
    node: str = ""


def describe_exit(code: int) -> str:
    """``exit status 1``, ``killed by SIGKILL`` (Popen's negative codes)."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def log_tail(path: Path, lines: int = LOG_LINES, max_bytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first one is probably cut
    return text[-lines:]


@dataclass
class _Pending:
    """A request from the socket, answered by the main thread."""

    request: Request
    answer: Future[dict[str, Any]] = field(default_factory=Future)


@dataclass
class _Started:
    """What the main thread hands a ``start`` request back to wait on."""

    proc: subprocess.Popen[bytes]
    url: str


class Watcher:
    def __init__(
        self,
        cluster: LocalCluster,
        say: Callable[[str], None],
        *,
        restart: bool = True,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.say = say
        self.clock = clock
        self.policy = RestartPolicy(list(cluster.nodes), restart=restart, backoff=backoff)
        self._watching: dict[str, subprocess.Popen[bytes]] = {}
        for name, node in cluster.nodes.items():
            if node.proc is not None:
                self._watching[name] = node.proc
                self.policy.started(name, node.started_at)
        self._requests: queue.Queue[_Pending | tuple[str, subprocess.Popen[bytes]]] = queue.Queue()
        self._stops: dict[str, list[Future[dict[str, Any]]]] = {}
        self._kill_at: dict[str, float] = {}
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.socket_path: Path | None = None

    # --- the control socket ------------------------------------------------------
    def serve(self) -> Path:
        """Listen on the control socket (the cluster's ``up.sock``, or one in a private
        temporary folder when that path is too long for a Unix socket)."""
        path = self.cluster.root / SOCKET_NAME
        if len(os.fsencode(path)) > 100:
            path = Path(tempfile.mkdtemp(prefix="edgerun-up-")) / SOCKET_NAME
        if path.exists() or path.is_symlink():
            with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
                probe.connect(str(path))
                raise RuntimeError(f"another `edgerun up` is using {self.cluster.root}")
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: only this user may stop nodes
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(MAX_CONNECTIONS)
        listener.settimeout(0.2)
        self._listener = listener
        self.socket_path = path
        threading.Thread(target=self._accept, name="up-socket", daemon=True).start()
        return path

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many at once
                continue
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                reply = self._answer(conn)
                conn.settimeout(READ_DEADLINE_S)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")
        finally:
            self._slots.release()

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        uid = _peer_uid(conn)
        if uid is not None and uid not in (os.getuid(), 0):
            return {"ok": False, "error": "refused: another user"}
        try:
            line = _read_line(conn, MAX_REQUEST_BYTES, READ_DEADLINE_S)
            request = msgspec.json.decode(line, type=Request)
        except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        if request.op != "status" and request.node not in self.cluster.nodes:
            known = ", ".join(self.cluster.nodes)
            return {"ok": False, "error": f"no node named {request.node!r} (nodes: {known})"}
        pending = _Pending(request)
        self._requests.put(pending)
        try:
            answer = pending.answer.result(timeout=START_HEALTHY_S)
        except Exception as exc:
            return {"ok": False, "error": str(exc) or "no answer"}
        started = answer.pop("_started", None)
        if isinstance(started, _Started):
            return self._wait_healthy(request.node, started)
        return answer

    def _wait_healthy(self, name: str, started: _Started) -> dict[str, Any]:
        deadline = time.monotonic() + START_HEALTHY_S
        with httpx.Client(timeout=1.0, verify=self.cluster.verify) as http:
            while time.monotonic() < deadline and not self._closed.is_set():
                code = started.proc.poll()
                if code is not None:
                    log = self.cluster.nodes[name].log_path
                    return {
                        "ok": False,
                        "error": f"{name} {describe_exit(code)} while starting; see {log}",
                    }
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{started.url}/v1/health").status_code == 200:
                        return {
                            "ok": True,
                            "message": f"started {name} (pid {started.proc.pid}), healthy at "
                            f"{started.url}",
                        }
                time.sleep(0.05)
        return {"ok": False, "error": f"{name} not healthy after {START_HEALTHY_S:g} s"}

    # --- the main thread ---------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], tick_s: float = 0.05) -> None:
        """Watch the nodes until ``should_stop()``; call from the main thread."""
        try:
            while not should_stop():
                try:
                    item = self._requests.get(timeout=tick_s)
                except queue.Empty:
                    item = None
                if isinstance(item, _Pending):
                    self._handle(item)
                elif item is not None:
                    self._healthy(*item)
                self._check()
        finally:
            self.close()

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.socket_path is not None:
                with contextlib.suppress(OSError):
                    self.socket_path.unlink()
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                item.answer.set_result({"ok": False, "error": "edgerun up is stopping"})
        for futures in self._stops.values():
            for future in futures:
                future.set_result({"ok": False, "error": "edgerun up is stopping"})
        self._stops.clear()

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for name, node in self.cluster.nodes.items():
            record = self.policy.nodes[name]
            proc = self._watching.get(name)
            rows.append(
                {
                    "name": name,
                    "role": node.config.role,
                    "url": node.url,
                    "state": record.state.value,
                    "pid": proc.pid if proc is not None else None,
                    "restarts": record.restarts,
                }
            )
        return rows

    def _handle(self, pending: _Pending) -> None:
        request, answer = pending.request, pending.answer
        name = request.node
        if request.op == "status":
            answer.set_result({"ok": True, "nodes": self.status()})
            return
        proc = self._watching.get(name)
        record = self.policy.nodes[name]
        if request.op == "stop":
            if proc is None:
                self.policy.stop(name)
                answer.set_result({"ok": True, "message": f"{name} is stopped (was not running)"})
                return
            if record.state is not NodeState.STOPPED:
                self.policy.stop(name)
                proc.send_signal(signal.SIGTERM)
                self._kill_at[name] = self.clock() + STOP_KILL_AFTER_S
                self.say(f"stopping [bold]{name}[/bold] (edgerun stop)")
            self._stops.setdefault(name, []).append(answer)
            return
        # start
        if proc is not None and record.state is NodeState.STOPPED:
            answer.set_result({"ok": False, "error": f"{name} is still stopping; try again"})
            return
        if self.policy.start(name):
            try:
                proc = self._spawn(name)
            except OSError as exc:
                self.policy.stop(name)
                answer.set_result({"ok": False, "error": f"cannot start {name}: {exc}"})
                return
            self.say(f"started [bold]{name}[/bold] (edgerun start, pid {proc.pid})")
        assert proc is not None
        answer.set_result({"ok": True, "_started": _Started(proc, self.cluster.url(name))})

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        self.cluster.start_node(name)
        proc = self.cluster.nodes[name].proc
        assert proc is not None
        self._watching[name] = proc
        self.policy.started(name, self.clock())
        return proc

    def _check(self) -> None:
        now = self.clock()
        for name, proc in list(self._watching.items()):
            code = proc.poll()
            if code is None:
                if name in self._kill_at and now >= self._kill_at[name]:
                    proc.kill()
                continue
            del self._watching[name]
            self._kill_at.pop(name, None)
            self._exited(name, proc, code, now)
        for name in self.policy.due(now):
            self.policy.restarting(name, now)
            try:
                proc = self._spawn(name)
            except OSError as exc:  # e.g. out of processes: try again after the backoff
                at = self.policy.exited(name, now)
                again = f"trying again in {at - now:.1f} s" if at is not None else "left down"
                self.say(f"cannot restart {name}: {escape(str(exc))}; {again}")
                continue
            restarts = self.policy.nodes[name].restarts
            self.say(f"restarted [bold]{name}[/bold] (pid {proc.pid}, restart {restarts})")
            threading.Thread(target=self._notify_healthy, args=(name, proc), daemon=True).start()

    def _exited(self, name: str, proc: subprocess.Popen[bytes], code: int, now: float) -> None:
        how = describe_exit(code)
        if self.policy.nodes[name].state is NodeState.STOPPED:
            self.policy.exited(name, now)
            self.say(f"[bold]{name}[/bold] stopped ({how}); `edgerun start {name}` starts it")
            for future in self._stops.pop(name, []):
                future.set_result({"ok": True, "message": f"stopped {name} ({how})"})
            return
        node = self.cluster.nodes[name]
        up_s = now - self.policy.nodes[name].started_at
        lines = log_tail(node.log_path)
        where = escape(str(node.log_path))
        self.say(
            f"[bold red]{name} exited[/bold red]: {how} (pid {proc.pid}, up {up_s:.1f} s); "
            + (
                f"last lines of {where}:\n"
                + "\n".join(f"  [dim]|[/dim] {escape(line)}" for line in lines)
                if lines
                else f"{where} is empty"
            )
        )
        at = self.policy.exited(name, now)
        if at is None:
            self.say(f"{name} stays down (--no-restart); `edgerun start {name}` starts it")
        else:
            self.say(f"restarting {name} in {at - now:.1f} s")

    def _notify_healthy(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Tell the main thread when a restarted node answers its health check."""
        result = self._wait_healthy(name, _Started(proc, self.cluster.url(name)))
        if result["ok"]:
            self._requests.put((name, proc))

    def _healthy(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if self._watching.get(name) is proc:
            self.say(f"{name} is healthy again")


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("3i", creds)[1])


def _read_line(conn: socket.socket, limit: int, deadline_s: float) -> bytes:
    """One line of at most ``limit`` bytes, within ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete request in time")
        conn.settimeout(left)
        chunk = conn.recv(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError(f"request over {limit} bytes")
    return data.split(b"\n", 1)[0]


def request(path: Path, op: str, node: str = "", timeout_s: float = 90.0) -> dict[str, Any]:
    """Ask the ``edgerun up`` listening at ``path``; its answer (``ok`` says how it went)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(str(path))
        conn.sendall(json.dumps({"op": op, "node": node}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data) if data.strip() else {"ok": False, "error": "no answer"}
    if not isinstance(answer, dict):
        raise ValueError("malformed answer")
    return answer
