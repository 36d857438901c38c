"""Entry point of one worker process of a multi-worker node (see :mod:`edgerun.node.workers`)."""

from __future__ import annotations

import os
import signal
import sys

from edgerun.node.workers import Seat, config_from_env
from edgerun.sandbox import libc


def main(argv: list[str]) -> None:
    index, count, fd = (int(a) for a in argv)
    # A worker outlives no supervisor: its port, budget and peers went with it.
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        raise SystemExit("edgerun: the node's supervisor is gone")
    from edgerun.logconfig import configure
    from edgerun.server import Server

    cfg = config_from_env()
    configure(f"{cfg.name}/{index}", cfg.log_format, cfg.log_level)
    Server(cfg, seat=Seat(index, count, fd)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
