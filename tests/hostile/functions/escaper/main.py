"""Attacks the sandbox walls: unshare and mount calls through libc."""

import ctypes
import errno

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def handler(event, context):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]

    def attempt(result):
        err = ctypes.get_errno() if result == -1 else 0
        return {"result": result, "errno": errno.errorcode.get(err, str(err))}

    return {
        "unshare_newns": attempt(libc.unshare(CLONE_NEWNS)),
        "unshare_newuser": attempt(libc.unshare(CLONE_NEWUSER)),
        "unshare_newnet": attempt(libc.unshare(CLONE_NEWNET)),
        "mount_tmpfs": attempt(libc.mount(b"none", b"/var/task", b"tmpfs", 0, None)),
    }
