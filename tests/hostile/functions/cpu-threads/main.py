"""Attacks the node's CPUs: burns them in several threads until stopped."""

import hashlib
import threading

BLOCK = b"\0" * (1024 * 1024)


def _burn_python():
    n = 0
    while True:
        n += 1


def _burn_native():
    while True:
        hashlib.sha256(BLOCK)  # releases the GIL: every thread gets a core


def handler(event, context):
    burn = _burn_native if event.get("native") else _burn_python
    threads = [threading.Thread(target=burn, daemon=True) for _ in range(event.get("threads", 8))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
