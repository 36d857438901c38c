"""Build a node's ASGI app from its config and serve it with uvicorn.

:class:`Server` is what ``edgerun node`` runs and what tests may embed; the
same code serves every role, so a local ``edgerun up`` and a multi-machine
deployment run exactly the same paths.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from edgerun.config import NodeConfig
from edgerun.guard import GuardedProtocol, Limits
from edgerun.node.credential import JoinFailed, load_or_join
from edgerun.node.workers import (
    Seat,
    Supervisor,
    budget_path,
    engine_layers,
    listen_socket,
    worker_count,
    worker_dir,
)
from edgerun.pool.budget import SharedBudget
from edgerun.sandbox.base import SandboxFactory
from edgerun.sandbox.broker import BrokerClient
from edgerun.sandbox.cgroups import Cgroups
from edgerun.sandbox.forked import EngineSettings, ZygoteSandboxFactory
from edgerun.sandbox.isolation import Layer, detect
from edgerun.sandbox.process import ProcessSandboxFactory
from edgerun.sandbox.uids import UidMap
from edgerun.tls import client_verify, server_kwargs

log = logging.getLogger("edgerun.server")


def token_path(cfg: NodeConfig) -> Path:
    return Path(cfg.token_file) if cfg.token_file else Path(cfg.data_dir) / "admin-token"


class _Uvicorn(uvicorn.Server):
    """uvicorn, telling the app as soon as a stop is asked for: it then waits for
    requests in flight, and a long-poll must not be one of them."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._on_exit is not None:
            self._on_exit()


def build_app(cfg: NodeConfig, seat: Seat | None = None) -> tuple[Any, Callable[[], None] | None]:
    """The ASGI app of this node, and what to call when its server is told to stop."""
    data = Path(cfg.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if cfg.role == "control":
        return _control_app(cfg, data)
    return _node_app(cfg, seat)


def _control_app(cfg: NodeConfig, data: Path) -> tuple[Any, Callable[[], None] | None]:
    # Imported here, as NodeApp is in _node_app: a process loads only its own role's
    # code, which starts each node of a topology a few hundred ms sooner.
    from edgerun.control.accounts import Accounts
    from edgerun.control.app import ControlApp, load_or_create_hash_key, load_or_create_token
    from edgerun.control.bundles import BundleStore
    from edgerun.control.registry import SqliteRegistry
    from edgerun.control.secrets import SecretBox, SecretStore, load_master_key

    token, created = load_or_create_token(token_path(cfg))
    if created:
        print(
            f"edgerun: admin token created at {token_path(cfg)} (shown once): {token}",
            file=sys.stderr,
        )
    registry = SqliteRegistry(data / "registry.db")
    accounts = Accounts(registry, load_or_create_hash_key(data / "key-hash.key"))
    accounts.ensure_bootstrap_admin(token)
    bundles = BundleStore(data / "bundles")
    try:
        master_key = load_master_key(
            data, key_file=cfg.secrets_key_file, key_env=cfg.secrets_key_env
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"edgerun: {exc}") from None
    secrets = SecretStore(data / "secrets.db", SecretBox(master_key))
    if secrets.key_secret("admin") is None:  # the bootstrap admin signs SigV4 too
        secrets.put_key_secret("admin", token)
    if not 0 < cfg.schedule_time_scale <= 86400:
        raise SystemExit("edgerun: schedule_time_scale must be in (0, 86400]")
    control = ControlApp(
        registry,
        bundles,
        accounts,
        secrets,
        max_bundle_bytes=cfg.max_bundle_bytes,
        retain_versions=cfg.retain_versions,
        gc_interval_s=cfg.gc_interval_s,
        body_timeout_s=cfg.body_timeout_s,
        node_verify=client_verify(cfg.tls),
        schedules_db=data / "schedules.db",
        schedule_time_scale=cfg.schedule_time_scale,
    )
    return control.asgi, control.stopping


def _node_app(cfg: NodeConfig, seat: Seat | None) -> tuple[Any, Callable[[], None] | None]:
    from edgerun.node.app import NodeApp

    if not cfg.control_url:
        raise SystemExit("edgerun: a region or POP needs control_url in its config")
    try:
        credential = load_or_join(cfg, verify=client_verify(cfg.tls))
    except JoinFailed as exc:
        raise SystemExit(f"edgerun: {exc}") from None
    if seat is None:
        factory, layers = make_engine(cfg)
        node = NodeApp(cfg, credential, factory, isolation=layers)
        return node.asgi, node.stopping
    budget = SharedBudget(budget_path(cfg), seat.index)
    shared_layers = engine_layers()
    if shared_layers is not None:  # the supervisor holds the node's one zygote engine
        factory = BrokerClient(
            socket.socket(fileno=seat.coordinator_fd),
            budget,
            zygote_estimate_mb=EngineSettings(False, False, False).zygote_estimate_mb,
        )
        layers = shared_layers
    else:
        factory, layers = make_engine(cfg, worker_dir(cfg, seat.index))
    app = NodeApp(cfg, credential, factory, isolation=layers, seat=seat, budget=budget)
    return app.asgi, app.stopping


def make_engine(cfg: NodeConfig, own: Path | None = None) -> tuple[SandboxFactory, list[Layer]]:
    """The sandbox engine for this node (or this worker of it, whose own files
    are under ``own``), and the isolation layers it achieves."""
    data = Path(cfg.data_dir)
    own = own or data
    if cfg.engine == "process" or (cfg.engine == "auto" and sys.platform != "linux"):
        plain = ProcessSandboxFactory(own / "logs" / "sandbox.log")
        return plain, [Layer("process per worker", True, "engine = process")]
    root = os.geteuid() == 0
    cgroups = Cgroups(f"{cfg.name}-{os.getpid()}") if root else None
    if cgroups is not None and cgroups.version:
        swept = cgroups.sweep_stale(cfg.name)
        if swept:
            log.warning("removed the cgroups of %d earlier run(s) of %s", swept, cfg.name)
    layers = detect(cfg.name, cgroups=cgroups)
    for layer in layers:
        if not layer.active:
            log.warning("isolation layer off: %s (%s)", layer.name, layer.detail)
    active = {layer.name: layer.active for layer in layers}
    settings = EngineSettings(
        namespaces=active["pid namespace"],
        setuid=active["uid per function"],
        seccomp=active["seccomp deny-list"],
        tmp_mb=cfg.tmp_mb,
        nofile=cfg.nofile,
        pids_max=cfg.pids_max,
        zygote_ttl_s=cfg.zygote_ttl_s,
        warm_cgroup_moves=cfg.warm_cgroup_moves,
    )
    uids = UidMap(data / "uids.json", cfg.uid_base, cfg.uid_count)
    factory = ZygoteSandboxFactory(
        node=cfg.name,
        settings=settings,
        cgroups=cgroups if cgroups and cgroups.version else None,
        uids=uids,
        root_mount=own / "sandbox-root",
    )
    return factory, layers


class Server:
    """One edgerun node on one port: one process, or a supervisor of ``workers``
    processes sharing the port (see :mod:`edgerun.node.workers`), or one of those."""

    def __init__(self, cfg: NodeConfig, *, seat: Seat | None = None) -> None:
        self.cfg = cfg
        self.seat = seat
        https = server_kwargs(cfg.tls)  # checked before anything is created
        self._supervisor: Supervisor | None = None
        count = worker_count(cfg)
        if seat is None and count > 1:
            try:  # once, before any worker starts: they share the credential
                load_or_join(cfg, verify=client_verify(cfg.tls))
            except JoinFailed as exc:
                raise SystemExit(f"edgerun: {exc}") from None
            self._supervisor = Supervisor(cfg, count)
            return
        self.app, on_exit = build_app(cfg, seat)
        self._server = _Uvicorn(
            uvicorn.Config(
                self.app,
                host=cfg.host,
                port=cfg.port,
                loop="uvloop",
                http=GuardedProtocol.with_limits(Limits.of(cfg)),
                proxy_headers=False,  # the node decides whom to believe (trusted_proxies)
                lifespan="on",
                access_log=False,
                log_level="warning",
                log_config=None,  # the node's own format (edgerun.logconfig), not uvicorn's
                timeout_graceful_shutdown=cfg.shutdown_grace_s,  # type: ignore[arg-type]  # a wait_for timeout: float is fine
                **https,  # when [tls] cert and key are set
            ),
            on_exit,
        )

    def run(self) -> None:
        if self._supervisor is not None:
            self._supervisor.run()
        elif self.seat is not None:
            self._server.run(sockets=[listen_socket(self.cfg.host, self.cfg.port)])
        else:
            self._server.run()
