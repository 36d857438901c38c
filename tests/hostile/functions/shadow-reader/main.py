"""Attacks the host: reads /etc/shadow, directly and through /proc."""


def _try_read(path):
    try:
        with open(path, "rb") as f:
            return {"read": f.read(200).decode(errors="replace")}
    except OSError as exc:
        return {"denied": type(exc).__name__, "error": str(exc)}


def handler(event, context):
    return {p: _try_read(p) for p in ("/etc/shadow", "/proc/1/root/etc/shadow")}
