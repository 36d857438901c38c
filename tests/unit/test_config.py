"""Topology settings: extra NodeConfig fields for a node, checked by NodeConfig."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edgerun.cluster import LocalCluster
from edgerun.config import (
    ControlSpec,
    NodeConfig,
    PopSpec,
    RegionRef,
    RegionSpec,
    TlsConfig,
    Topology,
    apply_settings,
    dump_toml,
    load_node_config,
)
from edgerun.lab import Lab, LabSpec


def base() -> NodeConfig:
    return NodeConfig(role="pop", name="pop-1", data_dir="/tmp/x", capacity_mb=256)


def test_settings_set_any_node_config_field() -> None:
    cfg = apply_settings(base(), {"idle_ttl_s": 60, "popularity_half_life_s": 30.5})
    assert (cfg.idle_ttl_s, cfg.popularity_half_life_s, cfg.capacity_mb) == (60.0, 30.5, 256)


def test_no_settings_leave_the_config_alone() -> None:
    cfg = base()
    assert apply_settings(cfg, {}) is cfg


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"idle_tll_s": 60}, "idle_tll_s"),
        ({"idle_ttl_s": "soon"}, "idle_ttl_s"),
        ({"port": 1}, "may not set port"),
    ],
)
def test_bad_settings_are_a_clear_error(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_settings(base(), settings)


def test_a_cluster_writes_the_settings_into_each_node_config(tmp_path: Path) -> None:
    topo = Topology(
        control=ControlSpec(port=1),
        region=[RegionSpec(name="r", port=2, settings={"zygote_ttl_s": 5})],
        pop=[PopSpec(name="p", port=3, settings={"idle_ttl_s": 7, "max_queue": 3})],
    )
    cluster = LocalCluster(topo, tmp_path)
    assert cluster.nodes["r"].config.zygote_ttl_s == 5.0
    assert cluster.nodes["p"].config.idle_ttl_s == 7.0
    assert cluster.nodes["p"].config.max_queue == 3
    assert cluster.nodes["p"].config.regions[0].name == "r"


def test_lab_settings_reach_every_pop_and_region(tmp_path: Path) -> None:
    lab = Lab(
        LabSpec(
            pops=2, regions=1, pop_settings={"idle_ttl_s": 60}, region_settings={"max_queue": 9}
        ),
        tmp_path,
    )
    pops = lab.cluster.by_role("pop")
    assert [p.config.idle_ttl_s for p in pops] == [60.0, 60.0]
    assert [r.config.max_queue for r in lab.cluster.by_role("region")] == [9]


def test_settings_survive_the_node_toml(tmp_path: Path) -> None:
    cfg = apply_settings(base(), {"idle_ttl_s": 60})
    path = tmp_path / "node.toml"
    path.write_text(dump_toml(cfg))
    assert load_node_config(path).idle_ttl_s == 60.0


def test_tls_survives_the_node_toml_beside_the_regions(tmp_path: Path) -> None:
    cfg = msgspec.structs.replace(
        base(),
        regions=[RegionRef(name="r", url="https://127.0.0.1:1")],
        tls=TlsConfig(cert="/etc/edgerun/node.pem", key="/etc/edgerun/node.key", ca="ca.pem"),
    )
    path = tmp_path / "node.toml"
    path.write_text(dump_toml(cfg))
    # A top-level key written after a table header would land in that table
    # (and be refused as unknown there), so equality also checks the order.
    assert load_node_config(path) == cfg
    assert "[tls]" in path.read_text()


def test_a_node_toml_without_tls_has_no_tls_table(tmp_path: Path) -> None:
    cfg = apply_settings(base(), {"tls": {"ca": "ca.pem"}})
    assert "[tls]" not in dump_toml(base())
    assert dump_toml(cfg).endswith('[tls]\nca = "ca.pem"\n')


def test_a_cert_without_its_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(dump_toml(base()) + '\n[tls]\ncert = "node.pem"\n')
    with pytest.raises(ValueError, match="cert and key must be set together"):
        load_node_config(path)
    with pytest.raises(ValueError, match="cert and key must be set together"):
        apply_settings(base(), {"tls": {"key": "node.key"}})


def test_a_tls_cluster_uses_https_and_a_node_may_trust_another_ca(tmp_path: Path) -> None:
    """tls is not an identity field: each node may have its own (here another ca)."""
    topo = Topology(
        control=ControlSpec(port=1),
        region=[RegionSpec(name="r", port=2)],
        pop=[PopSpec(name="p", port=3, settings={"tls": {"ca": "other.pem"}})],
    )
    tls = TlsConfig(cert="node.pem", key="node.key")  # no ca: the system's roots
    cluster = LocalCluster(topo, tmp_path, tls=tls)
    assert cluster.control_url == "https://127.0.0.1:1"
    assert cluster.url("r") == "https://127.0.0.1:2"
    assert cluster.nodes["r"].config.tls == tls
    assert cluster.nodes["p"].config.regions[0].url == "https://127.0.0.1:2"
    assert cluster.nodes["p"].config.tls == TlsConfig(ca="other.pem")
