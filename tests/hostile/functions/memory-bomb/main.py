"""Attacks the memory limit: allocates and touches about 1 GB."""

PAGE = 4096
CHUNK = 16 * 1024 * 1024


def handler(event, context):
    hoard = []
    for _ in range(event.get("mb", 1024) * 1024 * 1024 // CHUNK):
        chunk = bytearray(CHUNK)
        for i in range(0, CHUNK, PAGE):
            chunk[i] = 1
        hoard.append(chunk)
    return {"allocated_mb": len(hoard) * CHUNK // (1024 * 1024)}
