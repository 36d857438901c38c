"""Attacks the node's disk and memory: writes 10 GB to /tmp."""

import errno
import os

CHUNK = b"\0" * (1024 * 1024)


def handler(event, context):
    path = "/tmp/filler.bin"
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while written < event.get("gb", 10) * 1024**3:
            written += os.write(fd, CHUNK)
    except OSError as exc:
        return {
            "denied": True,
            "errno": errno.errorcode.get(exc.errno, str(exc.errno)),
            "error": str(exc),
            "written_mb": written // (1024 * 1024),
        }
    finally:
        os.close(fd)
        os.remove(path)
    return {"denied": False, "written_mb": written // (1024 * 1024)}
