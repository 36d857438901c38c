"""A local topology as real processes on loopback: what ``edgerun up`` runs.

Each node is ``python -m edgerun node --role ... --config FILE`` with its own
data folder, exactly as on separate machines; only the addresses differ.
Tests use the same class to start clusters on free ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from edgerun.config import NodeConfig, RegionRef, TlsConfig, Topology, apply_settings, dump_toml
from edgerun.files import write_atomic
from edgerun.node.credential import credential_path
from edgerun.tls import client_verify

JOIN_TOKEN_FILE = "join-token"


@dataclass
class NodeProcess:
    config: NodeConfig
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() when proc was started

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls.cert else "http"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.config.data_dir) / "node.log"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalCluster:
    def __init__(
        self,
        topology: Topology,
        root: Path,
        *,
        region_url: Callable[[str, str], str] | None = None,
        tls: TlsConfig | None = None,
        node_settings: dict[str, object] | None = None,
        own_process_groups: bool = False,
    ) -> None:
        """``region_url(pop, region)`` overrides how a POP reaches a region
        (the lab routes it through an emulated link). ``tls``: every node serves
        HTTPS with it and trusts its ``ca``, and the cluster's URLs and readiness
        probe follow; a node's ``settings`` may give it a ``tls`` of its own (e.g.
        another ``ca``). ``edgerun up`` passes none and stays plain HTTP.
        ``node_settings``: NodeConfig fields for every node, under the topology's own
        ``settings``. ``own_process_groups``: each node (with its sandboxes) in a
        process group of its own, so a terminal's Ctrl-C reaches only the caller,
        which stops them (``edgerun up``)."""
        self.own_process_groups = own_process_groups
        self.topology = topology
        scheme = "https" if tls and tls.cert else "http"
        self._verify = client_verify(tls) if tls else True
        self.root = root.resolve()
        self.token_file = self.root / "control" / "admin-token"
        host = topology.host
        control = NodeConfig(
            role="control",
            name="control",
            host=host,
            port=topology.control.port,
            data_dir=str(self.root / "control"),
            token_file=str(self.token_file),
        )
        self.control_url = f"{scheme}://{host}:{control.port}"
        nodes = [control]
        region_urls = {r.name: f"{scheme}://{host}:{r.port}" for r in topology.region}
        for r in topology.region:
            nodes.append(
                NodeConfig(
                    role="region",
                    name=r.name,
                    host=host,
                    port=r.port,
                    data_dir=str(self.root / r.name),
                    control_url=self.control_url,
                    join_token_file=str(self.root / r.name / JOIN_TOKEN_FILE),
                    capacity_mb=r.capacity_mb,
                    workers=1,  # the topology's nodes share this machine's cores
                    max_memory_mb=r.max_memory_mb,
                    max_timeout_s=r.max_timeout_s,
                )
            )
        for p in topology.pop:
            parents = p.regions or list(region_urls)
            nodes.append(
                NodeConfig(
                    role="pop",
                    name=p.name,
                    host=host,
                    port=p.port,
                    data_dir=str(self.root / p.name),
                    control_url=self.control_url,
                    join_token_file=str(self.root / p.name / JOIN_TOKEN_FILE),
                    capacity_mb=p.capacity_mb,
                    workers=1,
                    code_cache_mb=p.code_cache_mb,
                    placement_mode=p.placement_mode,
                    max_memory_mb=p.max_memory_mb,
                    max_timeout_s=p.max_timeout_s,
                    regions=[
                        RegionRef(
                            name=n, url=region_url(p.name, n) if region_url else region_urls[n]
                        )
                        for n in parents
                    ],
                )
            )
        extra = (
            {"control": topology.control.settings}
            | {r.name: r.settings for r in topology.region}
            | {p.name: p.settings for p in topology.pop}
        )
        extra = {n.name: {**(node_settings or {}), **extra.get(n.name, {})} for n in nodes}
        if tls:
            nodes = [msgspec.structs.replace(n, tls=tls) for n in nodes]
        nodes = [apply_settings(n, extra.get(n.name, {})) for n in nodes]
        self.nodes = {n.name: NodeProcess(n, Path(n.data_dir) / "node.toml") for n in nodes}
        self.up_socket: Path | None = None
        """Where ``edgerun up`` takes ``edgerun stop/start NODE`` (edgerun.watcher)."""

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a client of these nodes checks their certificates against."""
        return self._verify

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def url(self, name: str) -> str:
        return self.nodes[name].url

    def by_role(self, role: str) -> list[NodeProcess]:
        return [n for n in self.nodes.values() if n.config.role == role]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes.values():
            node.config_path.parent.mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(dump_toml(node.config))
        # Nodes that joined on an earlier run start with the control plane (they
        # serve what their registry copy holds and follow the feed once it
        # answers); POPs start once their regions answer, so they find them up.
        regions = [n.config.name for n in self.by_role("region")]
        pops = [n.config.name for n in self.by_role("pop")]
        joined = all(credential_path(self.nodes[name].config).exists() for name in regions + pops)
        self.start_node("control")
        if not joined:
            self.wait_healthy(["control"], timeout)
            self.issue_join_tokens()
        for name in regions:
            self.start_node(name)
        self.wait_healthy(["control", *regions], timeout)
        for name in pops:
            self.start_node(name)
        self.wait_healthy(pops, timeout)

    def issue_join_tokens(self) -> None:
        """One single-use join token per node that has no credential yet: the admin
        token stays with the operator; nodes get only what they trade for their own key."""
        auth = {"authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=10.0, headers=auth, verify=self._verify) as http:
            for node in self.nodes.values():
                cfg = node.config
                if cfg.role == "control" or credential_path(cfg).exists():
                    continue
                resp = http.post(
                    f"{self.control_url}/v1/join-tokens",
                    json={"role": cfg.role, "name": cfg.name, "ttl_s": 600},
                )
                resp.raise_for_status()
                token = str(resp.json()["token"]) + "\n"
                write_atomic(Path(cfg.join_token_file), token.encode())

    def start_node(self, name: str) -> None:
        node = self.nodes[name]
        log = open(node.log_path, "ab")  # noqa: SIM115 - the child process owns it
        node.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgerun",
                "node",
                "--role",
                node.config.role,
                "--config",
                str(node.config_path),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            process_group=0 if self.own_process_groups else None,
        )
        node.started_at = time.monotonic()
        log.close()

    def wait_healthy(self, names: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        with httpx.Client(timeout=1.0, verify=self._verify) as http:
            while pending:
                name = pending[0]
                node = self.nodes[name]
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(
                        f"node {name} exited with {node.proc.returncode}; see {node.log_path}:\n"
                        + node.log_path.read_text()[-2000:]
                    )
                try:
                    ok = http.get(f"{node.url}/v1/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    pending.pop(0)
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {name} not healthy after {timeout}s")
                time.sleep(0.05)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.nodes[name].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def stop(self) -> None:
        procs = [n.proc for n in self.nodes.values() if n.proc and n.proc.poll() is None]
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def describe(self) -> dict[str, object]:
        """What the CLI needs to find this cluster (written to cluster.json)."""
        state: dict[str, object] = {
            "control_url": self.control_url,
            "token_file": str(self.token_file),
            "nodes": [
                {"name": n.config.name, "role": n.config.role, "url": n.url}
                for n in self.nodes.values()
            ],
        }
        if self.up_socket is not None:
            state["up_socket"] = str(self.up_socket)
        return state

    def write_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.describe(), indent=2))
