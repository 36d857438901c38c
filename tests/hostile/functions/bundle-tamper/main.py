"""Attacks the node's code cache: rewrites its own bundle and the root filesystem."""

import os

TARGETS = ("/var/task/main.py", "/var/task/extra.py", "/evil.txt", "/usr/evil.txt")


def _try_write(path):
    try:
        with open(path, "a") as f:
            f.write("# tampered\n")
    except OSError as exc:
        return {"denied": type(exc).__name__, "error": str(exc)}
    return {"denied": False}


def handler(event, context):
    return {
        "writes": {p: _try_write(p) for p in TARGETS},
        "read_only": {
            p: bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in ("/", "/var/task", "/usr")
        },
    }
