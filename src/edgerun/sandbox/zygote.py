"""The template process and version zygotes: ``python -m edgerun.sandbox.zygote``.

The node starts one *template* at start-up (a clean interpreter, never a
fork of the threaded asyncio node) that has imported the runtime. For each
function version the template forks a *zygote* that enters new namespaces,
builds a minimal read-only root, drops to the function's uid, loads the
seccomp filter and imports the handler's module. Each cold start is then one
``fork()`` of that zygote (SOCK-style), handed to the node over SCM_RIGHTS.

Process tree per version::

    template --fork--> Z0 (unshare, waits) --fork--> Z1 zygote (pid 1 of its namespace)
                                                      \\--fork--> sandbox, sandbox, ...

Z0 stays so that the parent-death signal chains: node -> template -> Z0 -> Z1 -> sandboxes.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

from edgerun.sandbox import ctl, libc, seccomp
from edgerun.sandbox.base import sandbox_env
from edgerun.sandbox.protocol import ErrorInfo
from edgerun.sandbox.worker import WorkerInfo, error_info, load_handler, serve

TASK_ROOT = "/var/task"
_MAX_FD = 1 << 20
_ETC_FILES = ("resolv.conf", "hosts", "nsswitch.conf", "localtime", "ssl", "ca-certificates")


# --- the template -------------------------------------------------------------


def template_main(fd: int) -> None:
    _keep_only_fds({fd})
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    node = socket.socket(fileno=fd)
    while True:
        msg = _next_message(node)
        if isinstance(msg, ctl.StartZygote):
            try:
                _start_zygote(node, msg)
            except Exception as exc:  # the template must outlive any one request
                ctl.send(node, ctl.StartFailed(message=f"could not start the zygote: {exc}"))


def _keep_only_fds(keep: set[int]) -> None:
    """Point 0-2 at /dev/null and close every other descriptor not in ``keep``.

    Run at each step of the tree (template, Z0, Z1) so that nothing the node
    had open (its log, sockets) is ever reachable from user code."""
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(devnull, fd)
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)  # devnull too, unless it landed on 0-2


def _next_message(sock: socket.socket) -> object:
    """The next control message; the process ends when its peer has gone."""
    while True:
        try:
            msg, fds = ctl.recv(sock)
        except EOFError:
            os._exit(0)
        except ctl.ProtocolError:
            continue  # refused whole; the node is trusted, so this is a bug, not an attack
        ctl.close_all(fds)  # nobody sends us descriptors; never keep one by accident
        return msg


def _start_zygote(node: socket.socket, req: ctl.StartZygote) -> None:
    node_end, zyg_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rpipe, wpipe = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _keep_only_fds({zyg_end.fileno(), wpipe})
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _z0(req, zyg_end, wpipe)
        finally:
            os._exit(70)
    zyg_end.close()
    os.close(wpipe)
    with os.fdopen(rpipe, "rb") as r:
        report = r.read(256).decode(errors="replace")
    try:
        z1 = int(report)
        pidfd = os.pidfd_open(z1)
    except (ValueError, OSError):
        ctl.send(node, ctl.StartFailed(message=report or "zygote died while starting"))
        node_end.close()
        return
    ctl.send(node, ctl.ZygoteStarted(pid=z1), [node_end.fileno(), pidfd])
    node_end.close()
    os.close(pidfd)


def _z0(req: ctl.StartZygote, chan: socket.socket, report_fd: int) -> None:
    """Enter the namespaces, fork the zygote as their pid 1, and wait for it."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        if req.layers.namespaces:
            flags = libc.CLONE_NEWNS | libc.CLONE_NEWPID | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
            if not req.network:
                flags |= libc.CLONE_NEWNET
            libc.unshare(flags)
    except OSError as exc:
        os.write(report_fd, f"cannot create namespaces: {exc}".encode())
        os._exit(71)
    pid = os.fork()
    if pid == 0:
        _keep_only_fds({chan.fileno()})
        _z1(req, chan)
    chan.close()
    os.write(report_fd, str(pid).encode())
    os.close(report_fd)
    os.waitpid(pid, 0)
    os._exit(0)


# --- the zygote ------------------------------------------------------------------


def _z1(req: ctl.StartZygote, chan: socket.socket) -> None:
    try:
        # As pid 1 of its namespace the zygote only receives signals it handles;
        # Python's SIGINT handler would let a sandbox interrupt it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        task_root = req.bundle_dir
        if req.layers.namespaces:
            _build_root(req)
            task_root = TASK_ROOT
            with contextlib.suppress(OSError):
                socket.sethostname("edgerun")
        os.chdir(task_root)
        if req.layers.setuid:
            os.setgroups([])
            os.setresgid(req.gid, req.gid, req.gid)
            os.setresuid(req.uid, req.uid, req.uid)
        # After the uid change: changing credentials clears the parent-death signal.
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        _set_limits(req, sandbox=False)
        if req.layers.seccomp:
            seccomp.install()
    except BaseException as exc:
        ctl.send(
            chan,
            ctl.LoadFailed(
                error=ErrorInfo(
                    type="IsolationError", message=f"could not isolate the zygote: {exc}"
                )
            ),
        )
        os._exit(72)
    _zygote_loop(req, chan, task_root)


def _build_root(req: ctl.StartZygote) -> None:
    """A tmpfs root with read-only binds of what Python needs and the bundle."""
    libc.mount("none", "/", None, libc.MS_REC | libc.MS_PRIVATE)
    new_root = req.root_mount  # an empty folder of the node's; mounts here stay private
    libc.mount("tmpfs", new_root, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "size=1m,mode=755")

    def bind(src: str, dst: str | None = None, *, device: bool = False) -> None:
        target = new_root + (dst or src)
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        libc.mount(src, target, None, libc.MS_BIND | libc.MS_REC)
        flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_NOSUID
        if not device:
            flags |= libc.MS_RDONLY | libc.MS_NODEV
        libc.mount("none", target, None, flags)

    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            os.symlink(os.readlink(top), new_root + top)
        elif os.path.isdir(top):
            bind(top)
    for path in _python_paths():
        bind(path)
    for name in _ETC_FILES:
        path = os.path.join("/etc", name)
        if os.path.exists(path):
            bind(os.path.realpath(path), path)
    bind(req.bundle_dir, TASK_ROOT)
    for name, opts in (("/tmp", f"size={req.tmp_mb}m,mode=1777"), ("/dev", "size=64k,mode=755")):
        os.makedirs(new_root + name, exist_ok=True)
        libc.mount("tmpfs", new_root + name, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, opts)
    for dev in ("null", "zero", "random", "urandom"):
        bind(f"/dev/{dev}", device=True)
    os.makedirs(new_root + "/proc", exist_ok=True)
    libc.mount("proc", new_root + "/proc", "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    old = new_root + "/.old"
    os.makedirs(old)
    libc.pivot_root(new_root, old)
    os.chdir("/")
    libc.umount2("/.old", libc.MNT_DETACH)
    os.rmdir("/.old")
    libc.mount("none", "/", None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)


def _python_paths() -> list[str]:
    """Folders the interpreter imports from (stdlib, site-packages, edgerun)."""
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    paths.add(os.path.realpath(sys.base_prefix))
    # a folder inside another one needs no bind of its own
    return sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths))


def _read_env(fds: list[int]) -> dict[str, str]:
    """The function's environment, from the memfd the node attached to Load.

    It reaches this process only, after the fork from the template, so no
    other function's zygote can ever find it in inherited memory."""
    if len(fds) != 1:
        raise ValueError("Load must carry exactly one descriptor")
    with os.fdopen(fds[0], "rb") as f:
        return msgspec.msgpack.decode(f.read(), type=dict[str, str])


def _zygote_loop(req: ctl.StartZygote, chan: socket.socket, task_root: str) -> None:
    try:
        msg, fds = ctl.recv(chan)
        if not isinstance(msg, ctl.Load):
            raise ValueError("expected Load")
        env = _read_env(fds)
    except EOFError:
        os._exit(0)
    except (ctl.ProtocolError, ValueError, OSError, msgspec.DecodeError) as exc:
        ctl.send(chan, ctl.LoadFailed(error=ErrorInfo(type="InitError", message=str(exc))))
        os._exit(0)
    os.environ.clear()
    os.environ.update(sandbox_env(req.function, req.version, req.memory_mb, task_root, env))
    del env, fds
    try:
        handler = load_handler(task_root, req.handler)
    except BaseException as exc:
        err = error_info(exc, task_root)
        if not err.traceback:
            err.traceback = traceback.format_exception_only(exc)
        ctl.send(chan, ctl.LoadFailed(error=err))
        os._exit(0)
    ctl.send(chan, ctl.Loaded(pid=os.getpid()))
    info = WorkerInfo(
        function=req.function, version=req.version, memory_mb=req.memory_mb, code_root=task_root
    )
    statuses: dict[int, int] = {}
    while True:
        msg = _next_message(chan)
        if isinstance(msg, ctl.Fork):
            _reap_finished(statuses)
            _fork_sandbox(req, chan, handler, info)
        elif isinstance(msg, ctl.Reap):
            ctl.send(chan, ctl.Reaped(status=_reap(msg.pid, statuses)))


def _reap_finished(statuses: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        statuses[pid] = status
        if len(statuses) > 1024:
            statuses.pop(next(iter(statuses)))


def _reap(pid: int, statuses: dict[int, int]) -> int | None:
    if pid in statuses:
        return statuses.pop(pid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return status


def _fork_sandbox(
    req: ctl.StartZygote, chan: socket.socket, handler: Callable[..., Any], info: WorkerInfo
) -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            # Touch nothing until the node has moved this process into its own
            # cgroup and says so: until then its pages are charged to the zygote's.
            if child.recv(1) != ctl.GO:
                os._exit(0)
            chan.close()
            parent.close()
            _enter_sandbox(req)
            serve(child, handler, info)
        finally:
            os._exit(0)
    child.close()
    pidfd = os.pidfd_open(pid)
    ctl.send(chan, ctl.Forked(pid=pid), [parent.fileno(), pidfd])
    parent.close()
    os.close(pidfd)


def _enter_sandbox(req: ctl.StartZygote) -> None:
    """Per-sandbox limits, applied before the sandbox reads its first request."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _set_limits(req, sandbox=True)


def _set_limits(req: ctl.StartZygote, *, sandbox: bool) -> None:
    """rlimits for the zygote (before it imports user code) and each sandbox."""
    limits = [
        (resource.RLIMIT_NOFILE, req.nofile),
        (resource.RLIMIT_FSIZE, req.tmp_mb * 1024 * 1024),
        (resource.RLIMIT_CORE, 0),
    ]
    if req.layers.rlimit_as:
        limits.append((resource.RLIMIT_AS, (req.memory_mb + 256) * 1024 * 1024))
    if sandbox and not req.layers.setuid:
        limits.append((resource.RLIMIT_NPROC, max(req.nproc, 1)))
    for kind, value in limits:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(kind, (value, value))


def main() -> None:
    template_main(int(sys.argv[1]))


if __name__ == "__main__":
    main()
