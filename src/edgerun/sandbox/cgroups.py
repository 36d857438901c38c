"""Per-sandbox memory, pids, CPU and freezer control through cgroup v1 or v2.

The node (root) creates one cgroup per sandbox and per zygote under its own
subtree, moves the process in before any user code runs, and reads the OOM
counter when a sandbox dies so the caller learns it hit its memory limit.
Nothing may burn CPU outside a call: what a call leaves behind is killed
(processes) or frozen until the next call (threads). Whichever version the
kernel offers is used; with neither, the sandbox runs without (and
``edgerun doctor`` says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("edgerun.sandbox.cgroups")

_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
_CPU_PERIOD_US = 100_000


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


class Cgroups:
    """A node's cgroup subtree; ``version`` is 1, 2, or 0 when unavailable."""

    def __init__(self, name: str, root: Path = _ROOT) -> None:
        self.version = 0
        self._dirs: dict[str, Path] = {}
        v2 = root / "cgroup.controllers"
        if v2.exists() and {"memory", "pids", "cpu"} <= set(v2.read_text().split()):
            base = root / "edgerun" / name
            if self._mkdir_v2(root, base):
                self.version = 2
                self._dirs = {"memory": base, "pids": base, "cpu": base, "freezer": base}
        elif _writable(root / "memory"):
            self.version = 1
            for ctl in _V1_CONTROLLERS:
                if _writable(root / ctl):
                    path = root / ctl / "edgerun" / name
                    path.mkdir(parents=True, exist_ok=True)
                    self._dirs[ctl] = path

    @staticmethod
    def _mkdir_v2(root: Path, base: Path) -> bool:
        try:
            (root / "edgerun").mkdir(exist_ok=True)
            for parent in (root, root / "edgerun"):
                (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            base.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        except OSError:
            return False
        return True

    @property
    def memory(self) -> bool:
        return "memory" in self._dirs

    @property
    def pids(self) -> bool:
        return "pids" in self._dirs

    @property
    def freezer(self) -> bool:
        return "freezer" in self._dirs

    @property
    def freezer_dir(self) -> Path | None:
        return self._dirs.get("freezer")

    def create(
        self, name: str, *, memory_mb: int, pids_max: int, cpus: float = 1.0
    ) -> SandboxCgroup | None:
        if not self._dirs:
            return None
        dirs = {ctl: base / name for ctl, base in self._dirs.items()}
        for path in set(dirs.values()):
            path.mkdir(exist_ok=True)
        limit = str(memory_mb * 1024 * 1024)
        if "memory" in dirs:
            mem = dirs["memory"]
            if self.version == 2:
                (mem / "memory.max").write_text(limit)
                with contextlib.suppress(OSError):
                    (mem / "memory.swap.max").write_text("0")
            else:
                (mem / "memory.limit_in_bytes").write_text(limit)
                with contextlib.suppress(OSError):
                    (mem / "memory.memsw.limit_in_bytes").write_text(limit)
        if "pids" in dirs:
            (dirs["pids"] / "pids.max").write_text(str(pids_max))
        if "cpu" in dirs:
            quota = max(1000, int(cpus * _CPU_PERIOD_US))
            with contextlib.suppress(OSError):
                if self.version == 2:
                    (dirs["cpu"] / "cpu.max").write_text(f"{quota} {_CPU_PERIOD_US}")
                else:
                    (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
                    (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        return SandboxCgroup(self.version, dirs)

    def warmer(self, *, interval_s: float = 0.01, window_s: float = 60.0) -> MigrationWarmer | None:
        """A :class:`MigrationWarmer` for this node (cgroup v1 with a freezer only)."""
        if self.version != 1 or "freezer" not in self._dirs:
            return None
        return MigrationWarmer(self._dirs["freezer"], interval_s=interval_s, window_s=window_s)

    def remove_all(self) -> None:
        _remove_tree(self._dirs)

    def sweep_stale(self, node: str) -> int:
        """Remove what earlier runs of ``node`` left behind (their process is gone).

        A node that died without closing leaves its cgroups, and in them any
        frozen process (a frozen task acts on SIGKILL only once thawed)."""
        swept = 0
        mine = {path.name for path in self._dirs.values()}
        parents = {ctl: path.parent for ctl, path in self._dirs.items()}
        stale: dict[str, dict[str, Path]] = {}
        for ctl, parent in parents.items():
            for child in parent.glob(f"{node}-*"):
                pid = child.name.rsplit("-", 1)[1]
                if child.name in mine or not pid.isdigit() or Path(f"/proc/{pid}").exists():
                    continue
                stale.setdefault(child.name, {})[ctl] = child
        for dirs in stale.values():
            _remove_tree(dirs)
            swept += 1
        return swept


def _remove_tree(dirs: dict[str, Path]) -> None:
    """Kill and remove every cgroup under a node's subtree, then the subtree."""
    # The freezer first: its tasks only die of SIGKILL once thawed.
    for ctl, base in sorted(dirs.items(), key=lambda kv: kv[0] != "freezer"):
        if base.is_dir():
            for child in base.iterdir():
                if child.is_dir():
                    SandboxCgroup(_version_of(base), {ctl: child}).destroy()
            with contextlib.suppress(OSError):
                base.rmdir()


def _version_of(path: Path) -> int:
    return 2 if (path / "cgroup.controllers").exists() else 1


class SandboxCgroup:
    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs
        self._pids_current: int | None = None
        self.frozen = False

    def _count(self) -> int | None:
        """Processes in the cgroup, from a file kept open (read after every call)."""
        pids = self.dirs.get("pids")
        if pids is None:
            return None
        try:
            if self._pids_current is None:
                self._pids_current = os.open(pids / "pids.current", os.O_RDONLY)
            return int(os.pread(self._pids_current, 32, 0))
        except (OSError, ValueError):
            return None

    def _close_count(self) -> None:
        if self._pids_current is not None:
            os.close(self._pids_current)
            self._pids_current = None

    def add(self, pid: int) -> None:
        for path in set(self.dirs.values()):
            (path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for path in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                out.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return sorted(out)

    def kill_strays(self, keep: int) -> None:
        """SIGKILL every process in the cgroup but ``keep`` (cheap when there are none)."""
        if self._count() == 1:
            return
        for _ in range(20):
            strays = [p for p in self.pids() if p != keep]
            if not strays:
                return
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def settle(self, keep: int) -> None:
        """After a call: kill every other process; freeze ``keep`` if threads remain.

        ``pids.current`` counts threads too, so a lone process with no extra
        thread costs one read; only code that leaves threads running pays for
        the freeze (and the thaw before its next call)."""
        if self._count() == 1:
            return
        self.kill_strays(keep)
        count = self._count()
        if count is not None and count > 1:
            self.freeze()

    def freeze(self) -> None:
        if self._write_freezer(True):
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self._write_freezer(False):
            self.frozen = False

    def _write_freezer(self, frozen: bool) -> bool:
        path = self.dirs.get("freezer")
        if path is None:
            return False
        try:
            if self.version == 2:
                (path / "cgroup.freeze").write_text("1" if frozen else "0")
            else:
                (path / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        except OSError:
            return False
        return True

    def set_memory_limit(self, memory_mb: int) -> None:
        mem = self.dirs.get("memory")
        if mem is None:
            return
        limit = str(memory_mb * 1024 * 1024)
        if self.version == 2:
            (mem / "memory.max").write_text(limit)
            return
        # v1 refuses a memory limit above memory+swap: raise that one first.
        with contextlib.suppress(OSError):
            (mem / "memory.memsw.limit_in_bytes").write_text(limit)
        (mem / "memory.limit_in_bytes").write_text(limit)
        with contextlib.suppress(OSError):
            (mem / "memory.memsw.limit_in_bytes").write_text(limit)

    def memory_bytes(self) -> int | None:
        """Memory the cgroup's processes hold now (page cache and tmpfs included)."""
        mem = self.dirs.get("memory")
        if mem is None:
            return None
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int((mem / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        try:
            if self.version == 2:
                events = (mem / "memory.events").read_text()
                return any(
                    line.split()[0] == "oom_kill" and int(line.split()[1]) > 0
                    for line in events.splitlines()
                )
            control = (mem / "memory.oom_control").read_text()
            return any(
                line.startswith("oom_kill ") and int(line.split()[1]) > 0
                for line in control.splitlines()
            )
        except (OSError, ValueError, IndexError):
            return False

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, including ones it forked."""
        if self.version == 2:
            for path in set(self.dirs.values()):
                with contextlib.suppress(OSError):
                    (path / "cgroup.kill").write_text("1")
        own = os.getpid()
        for _ in range(50):
            # Never the node itself: one of its threads (the MigrationWarmer) may be
            # passing through a cgroup of its subtree when the subtree is removed.
            pids = [p for p in self.pids() if p != own]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # A frozen task only acts on SIGKILL once thawed (cgroup v1); the state
            # is written whatever ``frozen`` says: another run may have frozen it.
            self._write_freezer(False)
            self.frozen = False
            time.sleep(0.002)

    def forget(self) -> None:
        """Let go of this handle (another process removes the cgroup)."""
        self._close_count()

    def destroy(self) -> None:
        self._close_count()
        self.kill_all()
        for path in set(self.dirs.values()):
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


class MigrationWarmer:
    """Keeps moving a process into a cgroup fast (cgroup v1).

    A move takes a kernel-wide lock whose writer waits for an RCU grace period
    unless one passed very recently: measured here, 8-15 ms after 100 ms of quiet
    against 0.15 ms right after another move. That wait was a cold start's
    whole tail after idle. So while the node is starting sandboxes, one thread
    moves itself between two empty freezer cgroups every ``interval_s``, which
    keeps the lock's fast path open for every hierarchy; ``window_s`` after the
    last sandbox start it parks, so an idle node pays nothing (active, it costs
    about 2% of one core). The thread is never frozen, and it leaves the two
    cgroups before parking and before :meth:`close` returns, so removing the
    node's subtree cannot touch it.
    """

    def __init__(
        self,
        base: Path,
        *,
        interval_s: float = 0.01,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dirs = (base / "warm-a", base / "warm-b")
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._until = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.moves = 0
        """Moves made so far (for tests and figures)."""
        self._thread = threading.Thread(target=self._run, name="cgroup-warmer", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        """A sandbox started: keep moves fast for the next ``window_s``."""
        self._until = self._clock() + self.window_s
        if not self._wake.is_set():
            self._wake.set()

    @property
    def active(self) -> bool:
        return self._clock() < self._until

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)
        for path in self._dirs:
            with contextlib.suppress(OSError):
                path.rmdir()

    def _run(self) -> None:
        tid = str(threading.get_native_id())
        home = _own_freezer_tasks()
        try:
            for path in self._dirs:
                path.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("cannot keep cgroup moves fast: %s", exc)
            return
        turn = 0
        try:
            while not self._stop.is_set():
                if not self.active:
                    _move(home, tid)
                    self._wake.wait()
                    self._wake.clear()
                    continue
                if not _move(self._dirs[turn] / "tasks", tid):
                    log.warning("cgroup moves are no longer kept fast: a move failed")
                    return
                self.moves += 1
                turn ^= 1
                self._stop.wait(self.interval_s)
        finally:
            _move(home, tid)


def _own_freezer_tasks() -> Path:
    """The ``tasks`` file of the freezer cgroup this thread started in."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/thread-self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            home = _ROOT / "freezer" / path.lstrip("/") / "tasks"
            if "freezer" in controllers.split(",") and home.exists():
                return home  # (not there in a container without its own cgroup namespace)
    return _ROOT / "freezer" / "tasks"


def _move(tasks: Path, tid: str) -> bool:
    try:
        tasks.write_text(tid)
    except OSError:
        return False
    return True
