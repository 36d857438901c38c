"""Forges whatever Result frame the caller asks for, bypassing the Lambda mapping.

The sandbox runs this module, so it can replace the worker's own helpers:
the node must not trust anything the frame says.
"""

import sys

worker = sys.modules["edgerun.sandbox.worker"]
_real_invoke = worker._invoke


def _forged(fn, msg, info):
    event = msg.event if isinstance(msg.event, dict) else {}
    body = event.get("body") if isinstance(event.get("body"), str) else ""
    try:
        import json

        spec = json.loads(body) if body else {}
    except ValueError:
        spec = {}
    if not spec:
        spec = event
    if "status" not in spec:
        return _real_invoke(fn, msg, info)
    return worker.Result(
        id=msg.id,
        status=spec["status"],
        headers=[tuple(h) for h in spec.get("headers", [])],
        body=b"forged",
        logs="L" * spec.get("log_bytes", 0),
    )


worker._invoke = _forged


def handler(event, context):
    return {"ok": True}
