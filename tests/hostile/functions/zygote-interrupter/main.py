"""Attacks its own zygote (pid 1 of the sandbox): sends it SIGINT, which Python handles."""

import os
import signal


def handler(event, context):
    if event.get("interrupt"):
        try:
            os.kill(1, signal.SIGINT)
        except OSError as exc:
            return {"denied": True, "error": f"{type(exc).__name__}: {exc}"}
        return {"denied": False}
    return {"ok": True}
