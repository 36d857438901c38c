"""A seccomp-BPF deny-list, built by hand so it needs no libseccomp.

Denied calls fail with EPERM instead of killing the process, so user code
gets an ordinary ``PermissionError`` it can report. ``clone`` is allowed
(``fork`` needs it) unless it asks for new namespaces; ``clone3`` answers
ENOSYS so libc falls back to ``clone``, whose flags BPF can inspect.
"""

from __future__ import annotations

import ctypes
import errno
import platform

from edgerun.sandbox import libc

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# name -> (x86_64, aarch64)
_DENIED: dict[str, tuple[int, int]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "bpf": (321, 280),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "unshare": (272, 97),
    "setns": (308, 268),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "syslog": (103, 116),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "adjtimex": (159, 171),
    "quotactl": (179, 60),
    "fsopen": (430, 430),
    "fsmount": (432, 432),
    "fsconfig": (431, 431),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "mount_setattr": (442, 442),
    "pidfd_getfd": (438, 438),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "process_madvise": (440, 440),
}
_CLONE = (56, 220)
_SOCKET = (41, 198)
_AF_VSOCK = 40
_CLONE3 = (435, 435)
_NS_FLAGS = (
    libc.CLONE_NEWNS
    | libc.CLONE_NEWUSER
    | libc.CLONE_NEWPID
    | libc.CLONE_NEWNET
    | libc.CLONE_NEWIPC
    | libc.CLONE_NEWUTS
    | libc.CLONE_NEWCGROUP
)

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def supported() -> bool:
    return platform.machine() in _AUDIT_ARCH


def denied_syscalls() -> list[str]:
    return sorted([*_DENIED, "clone(namespace flags)", "clone3", "socket(AF_VSOCK)"])


def build_filter(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k) tuples."""
    machine = machine or platform.machine()
    idx = 0 if machine == "x86_64" else 1
    numbers = sorted({nrs[idx] for nrs in _DENIED.values()})
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 4),  # A = arch
        (_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),  # foreign ABI: kill
        (_LD_W_ABS, 0, 0, 0),  # A = syscall number
    ]
    if machine == "x86_64":
        prog.append((0x35, 0, 1, 0x40000000))  # JGE: x32 ABI numbers
        prog.append((_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))
    for nr in numbers:
        prog.append((_JEQ_K, 0, 1, nr))
        prog.append((_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))
    prog.append((_JEQ_K, 0, 1, _CLONE3[idx]))
    prog.append((_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS))
    prog += [
        # socket(AF_VSOCK, ...): vsock is not namespaced, so it would reach the host.
        (_JEQ_K, 0, 4, _SOCKET[idx]),
        (_LD_W_ABS, 0, 0, 16),  # A = low word of args[0], the family
        (_JEQ_K, 0, 1, _AF_VSOCK),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ALLOW),
        (_JEQ_K, 0, 3, _CLONE[idx]),
        (_LD_W_ABS, 0, 0, 16),  # A = low word of args[0]
        (_JSET_K, 0, 1, _NS_FLAGS),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    return prog


def install() -> None:
    """Load the filter into this process (and every child it will have)."""
    prog = build_filter()
    arr = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), arr)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    libc.prctl(
        libc.PR_SET_SECCOMP,
        libc.SECCOMP_MODE_FILTER,
        ctypes.cast(ctypes.pointer(fprog), ctypes.c_void_p),
    )
