"""Leaves ``mb`` MB in its /tmp, which outlives the call (and the sandbox)."""


def handler(event, context):
    with open("/tmp/kept.bin", "wb") as f:
        f.write(b"\0" * (int(event.get("mb", 1)) * 1024 * 1024))
    return {"kept_mb": event.get("mb", 1)}
