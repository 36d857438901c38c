"""Scan every readable anonymous mapping of this process for a needle.

The needle is another function's secret: if it was ever in memory this
process inherited (a template that decoded it, say), it is found here.
"""

import ctypes
import re


def handler(event, context):
    # Needles arrive reversed, so the event holds no copy in the form searched for;
    # the control needle (never held by anyone) counts this call's own copies.
    needles = [n[::-1].encode() for n in event["reversed"]]
    patterns = [re.compile(re.escape(n)) for n in needles]
    found = [0] * len(needles)
    scanned = 0
    with open("/proc/self/maps") as maps:
        lines = maps.read().splitlines()
    for line in lines:
        parts = line.split()
        perms, path = parts[1], (parts[5] if len(parts) > 5 else "")
        if not perms.startswith("r") or path not in ("", "[heap]", "[stack]"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        chunk = ctypes.string_at(start, end - start)
        scanned += len(chunk)
        for i, pattern in enumerate(patterns):
            found[i] += len(pattern.findall(chunk))
        del chunk
    return {"found": found, "scanned_mb_at_least": int(scanned > 1 << 20)}
