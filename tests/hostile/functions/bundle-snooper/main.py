"""Attacks other tenants' code: looks for and reads another function's bundle."""

import os

SKIP = {"/proc", "/sys", "/dev"}


def _try_read(path):
    try:
        if os.path.isdir(path):
            return {"listed": sorted(os.listdir(path))}
        with open(path, "rb") as f:
            return {"read": f.read(200).decode(errors="replace")}
    except OSError as exc:
        return {"denied": type(exc).__name__, "error": str(exc)}


def handler(event, context):
    found = []
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
        if event["filename"] in files:
            found.append(os.path.join(root, event["filename"]))
    return {
        "found": found,
        "paths": {p: _try_read(p) for p in event["paths"]},
        "own_bundle": sorted(os.listdir("/var/task")),
    }
