"""Attacks the node's memory: ptrace(PTRACE_ATTACH) on a given pid."""

import ctypes
import errno
import os

PTRACE_ATTACH = 16


def handler(event, context):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    out = {}
    for pid in event["pids"]:
        result = libc.ptrace(PTRACE_ATTACH, pid, None, None)
        err = ctypes.get_errno()
        out[str(pid)] = {"result": result, "errno": errno.errorcode.get(err, str(err))}
    try:
        with open("/proc/1/mem", "rb") as f:
            f.read(1)
        out["proc_1_mem"] = "opened"
    except OSError as exc:
        out["proc_1_mem"] = type(exc).__name__
    out["my_pid"] = os.getpid()
    return out
