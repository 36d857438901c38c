"""Attacks other processes: os.kill with SIGKILL (or another signal) on a given pid."""

import os
import signal


def handler(event, context):
    sig = getattr(signal, event.get("signal", "SIGKILL"))
    try:
        os.kill(event["pid"], sig)
    except OSError as exc:
        return {"denied": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"denied": False, "my_pid": os.getpid()}
