"""Attacks the node: reads its data dir (registry, uid map, config, token)."""

import os


def _try_read(path):
    try:
        if os.path.isdir(path):
            return {"listed": sorted(os.listdir(path))}
        with open(path, "rb") as f:
            return {"read": f.read(200).decode(errors="replace")}
    except OSError as exc:
        return {"denied": type(exc).__name__, "error": str(exc)}


def handler(event, context):
    return {p: _try_read(p) for p in event["paths"]}
