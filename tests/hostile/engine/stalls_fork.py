"""Replaces its zygote's fork step with one that never answers."""

import sys
import time


def _stall(*args, **kwargs):
    time.sleep(3600)


sys.modules["__main__"]._fork_sandbox = _stall  # the zygote runs as __main__


def handler(event, context):
    return {"ok": True}
