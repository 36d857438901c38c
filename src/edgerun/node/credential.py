"""A node's own credential: a join token, traded once for a node key.

The admin token never reaches a node. An operator (or ``edgerun up``) asks
the control plane for a short-lived, single-use join token per node; the
node trades it at start-up for a key that can do only what a node needs
(follow the feed, fetch bundles and secrets, forward calls) and that the
operator can revoke on its own. The key is kept in the node's data folder
(mode 0600) so a restart needs no new token.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from pathlib import Path

import httpx
import msgspec

from edgerun.auth import NodeCredential
from edgerun.config import NodeConfig
from edgerun.files import write_atomic

CREDENTIAL_FILE = "node-credential.json"
JOIN_TOKEN_ENV = "EDGERUN_JOIN_TOKEN"


class JoinFailed(RuntimeError):
    pass


def credential_path(cfg: NodeConfig) -> Path:
    return Path(cfg.data_dir) / CREDENTIAL_FILE


def load_or_join(
    cfg: NodeConfig, *, timeout_s: float = 30.0, verify: ssl.SSLContext | bool = True
) -> NodeCredential:
    """This node's credential: the saved one, else one traded for its join token."""
    path = credential_path(cfg)
    if path.exists():
        try:
            return msgspec.json.decode(path.read_bytes(), type=NodeCredential)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise JoinFailed(f"cannot read this node's credential at {path}: {exc}") from None
    token = _join_token(cfg)
    credential = _join(cfg.control_url.rstrip("/"), token, timeout_s, verify)
    _save(path, credential)
    if cfg.join_token_file:
        with contextlib.suppress(OSError):
            os.unlink(cfg.join_token_file)  # spent: nothing on disk grants a second join
    return credential


def _join_token(cfg: NodeConfig) -> str:
    if cfg.join_token_file:
        try:
            return Path(cfg.join_token_file).read_text().strip()
        except OSError as exc:
            raise JoinFailed(
                f"cannot read the join token at {cfg.join_token_file}: {exc}"
            ) from None
    token = os.environ.get(JOIN_TOKEN_ENV, "").strip()
    if not token:
        raise JoinFailed(
            f"this node has no credential yet: set join_token_file in its config or "
            f"{JOIN_TOKEN_ENV} (create one with `edgerun nodes join-token`)"
        )
    return token


def _join(
    control_url: str, token: str, timeout_s: float, verify: ssl.SSLContext | bool
) -> NodeCredential:
    """Trade the token, retrying while the control plane is starting or unreachable."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0, verify=verify) as http:
        while time.monotonic() < deadline:
            try:
                resp = http.post(f"{control_url}/v1/nodes/join", json={"token": token})
            except httpx.HTTPError as exc:
                last = str(exc)
            else:
                if resp.status_code == 201:
                    try:
                        return msgspec.json.decode(resp.content, type=NodeCredential)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise JoinFailed(
                            f"the control plane's join answer is invalid: {exc}"
                        ) from None
                if resp.status_code < 500:
                    raise JoinFailed(f"the control plane refused the join token: {resp.text[:300]}")
                last = f"HTTP {resp.status_code}"
            time.sleep(0.2)
    raise JoinFailed(f"could not join the cluster at {control_url} within {timeout_s}s: {last}")


def _save(path: Path, credential: NodeCredential) -> None:
    write_atomic(path, msgspec.json.encode(credential), durable=True)  # owner-only
