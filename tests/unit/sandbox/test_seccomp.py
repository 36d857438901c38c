"""The hand-built seccomp program: its shape, without loading it."""

import pytest

from edgerun.sandbox import seccomp


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_filter_checks_the_architecture_first(machine: str) -> None:
    prog = seccomp.build_filter(machine)

    assert prog[0] == (0x20, 0, 0, 4)
    assert prog[1][0] == 0x15


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_filter_ends_by_allowing_everything_else(machine: str) -> None:
    assert seccomp.build_filter(machine)[-1] == (0x06, 0, 0, 0x7FFF0000)


def test_filter_denies_ptrace_with_eperm_on_x86_64() -> None:
    prog = seccomp.build_filter("x86_64")
    i = prog.index((0x15, 0, 1, 101))

    assert prog[i + 1] == (0x06, 0, 0, 0x00050000 | 1)


def test_denied_list_names_the_dangerous_calls() -> None:
    denied = seccomp.denied_syscalls()

    for name in (
        "ptrace",
        "mount",
        "bpf",
        "kexec_load",
        "keyctl",
        "unshare",
        "setns",
        "init_module",
    ):
        assert name in denied


def _in_filtered_child(probe: str) -> str:
    """Run ``probe`` (Python source printing one line) in a child under the filter."""
    import subprocess
    import sys

    code = f"from edgerun.sandbox import seccomp\nseccomp.install()\n{probe}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not seccomp.supported(), reason="seccomp filter is built for x86_64/aarch64")
def test_vsock_sockets_are_denied_but_unix_and_inet_are_not() -> None:
    probe = """
import socket
def attempt(family, kind):
    try:
        socket.socket(family, kind).close()
        return "ok"
    except OSError as exc:
        return str(exc.errno)
print(attempt(40, socket.SOCK_STREAM), attempt(socket.AF_UNIX, socket.SOCK_STREAM),
      attempt(socket.AF_INET, socket.SOCK_STREAM))
"""
    assert _in_filtered_child(probe) == "1 ok ok"
