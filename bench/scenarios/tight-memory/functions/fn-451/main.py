"""A stand-in function: its import and each call take as long as its env says."""

import os
import time

time.sleep(float(os.environ.get("IMPORT_MS", "0")) / 1000)  # a heavy import
_DURATION_S = float(os.environ.get("DURATION_MS", "0")) / 1000


def handler(event, context):
    time.sleep(_DURATION_S)
    return "ok"
