"""Attacks the timeout: leaves a forked child spinning, CPU limit lifted, after it returns."""

import os
import resource


def handler(event, context):
    pid = os.fork()
    if pid == 0:
        try:
            inf = resource.RLIM_INFINITY
            resource.setrlimit(resource.RLIMIT_CPU, (inf, inf))
            while True:
                pass
        finally:
            os._exit(0)
    return {"child": pid, "uid": os.getuid()}
