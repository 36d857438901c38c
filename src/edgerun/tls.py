"""HTTPS for nodes: what uvicorn serves with, and what a node trusts when it calls out.

Both are read from a node's ``[tls]`` table (:class:`edgerun.config.TlsConfig`)
and checked when the node starts, so a wrong path or a key that does not
match its certificate stops the node with one clear line, instead of a
traceback from uvicorn or a handshake failure on every call later.
"""

from __future__ import annotations

import ssl
from typing import TypedDict

from edgerun.config import TlsConfig


class ServerTls(TypedDict, total=False):
    """The keyword arguments of ``uvicorn.Config`` that make it serve HTTPS
    (typed, so that ``**`` into uvicorn is checked)."""

    ssl_certfile: str
    ssl_keyfile: str


def server_kwargs(tls: TlsConfig) -> ServerTls:
    """uvicorn's ssl arguments for this node: none (plain HTTP) unless both
    ``cert`` and ``key`` are set. Raises ``ValueError`` when only one is, or
    when they cannot be loaded together."""
    if not tls.cert and not tls.key:
        return {}
    if not tls.cert or not tls.key:
        # TlsConfig refuses this when built; a field changed afterwards is not checked.
        raise ValueError("tls: cert and key must be set together (or neither)")
    for path in (tls.cert, tls.key):  # OpenSSL's own error does not say which
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"tls: cannot read {path}: {exc.strerror}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            tls.cert, tls.key, password=_no_password
        )
    except ssl.SSLError as exc:
        raise ValueError(
            f"tls: {tls.cert} and {tls.key} are not a PEM certificate and its private key "
            f"({exc.reason or exc})"
        ) from None
    return {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}


def client_verify(tls: TlsConfig) -> ssl.SSLContext:
    """The one TLS context every outgoing call of a node verifies with (the feed
    and bundles from the control plane, region health checks, forwards): ``ca``
    when set, else the system's default trust store.

    Always a context rather than ``True``: httpx's default trusts certifi's
    roots and aiohttp's the system's, and a region that passes its health
    checks but fails every forward (or the reverse) would be worse than either.
    """
    try:
        return ssl.create_default_context(cafile=tls.ca or None)
    except ssl.SSLError as exc:
        reason = exc.reason or exc
        raise ValueError(f"tls: ca {tls.ca} holds no PEM certificate ({reason})") from None
    except OSError as exc:
        raise ValueError(f"tls: cannot read ca {tls.ca}: {exc.strerror}") from None


def _no_password() -> str:
    """Called only for an encrypted key: OpenSSL would otherwise prompt on the
    terminal, and uvicorn is given no password either."""
    raise ValueError("tls: the key is encrypted; give the node an unencrypted key file")
