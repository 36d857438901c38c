"""Which isolation layers this machine offers, found by trying each one.

``python -m edgerun.sandbox.isolation`` probes in throw-away child processes
(so the caller, possibly a threaded node, never forks) and prints JSON;
:func:`detect` runs it and adds the cgroup check. ``edgerun doctor`` prints
the result, and a node reports the layers it actually runs with.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass

from edgerun.sandbox import libc, seccomp
from edgerun.sandbox.cgroups import Cgroups


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    active: bool
    detail: str


def _in_child(fn: object) -> tuple[bool, str]:
    """Run ``fn`` in a forked child; True if it returned without raising."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()  # type: ignore[operator]
            os.write(w, b"ok")
        except BaseException as exc:
            os.write(w, str(exc).encode()[:500])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out == "ok", out


def _try_namespaces() -> None:
    libc.unshare(
        libc.CLONE_NEWNS
        | libc.CLONE_NEWPID
        | libc.CLONE_NEWNET
        | libc.CLONE_NEWIPC
        | libc.CLONE_NEWUTS
    )
    libc.mount("none", "/", None, libc.MS_REC | libc.MS_PRIVATE)


def _try_seccomp() -> None:
    seccomp.install()
    try:
        libc.unshare(libc.CLONE_NEWUTS)
    except PermissionError:
        return
    except OSError as exc:
        if exc.errno == 1:
            return
        raise
    raise RuntimeError("the filter loaded but did not deny unshare")


def probe() -> dict[str, tuple[bool, str]]:
    linux = sys.platform == "linux"
    root = os.geteuid() == 0
    out: dict[str, tuple[bool, str]] = {
        "linux": (linux, platform.platform()),
        "root": (root, f"euid {os.geteuid()}"),
    }
    if not linux:
        return out
    out["namespaces"] = _in_child(_try_namespaces) if root else (False, "needs root")
    out["seccomp"] = (
        _in_child(_try_seccomp)
        if seccomp.supported()
        else (False, f"no syscall table for {platform.machine()}")
    )
    return out


def detect(node: str = "doctor", *, cgroups: Cgroups | None = None) -> list[Layer]:
    """Every layer, active or not, with a short reason."""
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "edgerun.sandbox.isolation"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    try:
        found = {k: (bool(v[0]), str(v[1])) for k, v in json.loads(proc.stdout).items()}
    except ValueError:
        found = {"linux": (False, f"probe failed: {proc.stderr.strip()[-200:]}")}
    root = found.get("root", (False, ""))[0]
    ns = found.get("namespaces", (False, "not linux"))
    layers = [
        Layer("linux", *found.get("linux", (False, ""))),
        Layer("root", *found.get("root", (False, ""))),
        Layer(
            "uid per function",
            root,
            "setresuid to a uid from the node's range" if root else "needs root",
        ),
        Layer("mount namespace (read-only root, private /tmp)", *ns),
        Layer("pid namespace", *ns),
        Layer("network namespace (no interfaces unless network = true)", *ns),
        Layer("seccomp deny-list", *found.get("seccomp", (False, "not linux"))),
        Layer("no_new_privs + parent-death signal", found.get("linux", (False, ""))[0], "prctl"),
        Layer("rlimits (NOFILE, FSIZE, CPU, CORE)", True, "setrlimit"),
    ]
    cg = cgroups if cgroups is not None else (Cgroups(node) if root else None)
    version = cg.version if cg else 0
    layers.append(
        Layer(
            "memory cgroup",
            bool(cg and cg.memory),
            f"cgroup v{version}" if cg and cg.memory else "unavailable: RLIMIT_AS is the fallback",
        )
    )
    layers.append(
        Layer(
            "pids cgroup",
            bool(cg and cg.pids),
            f"cgroup v{version}" if cg and cg.pids else "unavailable: RLIMIT_NPROC is the fallback",
        )
    )
    if cgroups is None and cg is not None:
        cg.remove_all()
    return layers


def as_dicts(layers: list[Layer]) -> list[dict[str, object]]:
    return [asdict(layer) for layer in layers]


if __name__ == "__main__":
    print(json.dumps(probe()))
