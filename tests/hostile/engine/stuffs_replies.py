"""Attaches extra descriptors to every Reaped reply its zygote sends the node."""

import os

from edgerun.sandbox import ctl

_send = ctl.send


def _stuffed(sock, msg, fds=()):
    extra = []
    if isinstance(msg, ctl.Reaped):
        extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]
    _send(sock, msg, [*fds, *extra])
    for fd in extra:
        os.close(fd)


ctl.send = _stuffed


def handler(event, context):
    return {"ok": True}
