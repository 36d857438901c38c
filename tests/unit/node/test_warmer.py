"""Warming by time of day, on an injected clock: before the usual peak, and after it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.unit.pool.test_pool import FakeFactory

from edgerun.auth import Keyring
from edgerun.config import NodeConfig
from edgerun.models import FunctionConfig, FunctionRecord, Version
from edgerun.node.catalog import Catalog
from edgerun.node.placer import Measurements, Placer
from edgerun.node.regions import Regions
from edgerun.node.state import Specs
from edgerun.node.warmer import Warmer, load_profile
from edgerun.placement import WeeklyProfile
from edgerun.pool import Pool
from edgerun.sandbox.base import SandboxSpec

pytestmark = pytest.mark.anyio

SLOT = 60.0
"""A compressed day: 24 slots of a minute."""
PEAK_SLOT = 9
DAY = SLOT * 24


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LoadedFactory(FakeFactory):
    def is_loaded(self, spec: SandboxSpec) -> bool:
        return False


def record(name: str) -> FunctionRecord:
    version = Version(sha256="v" * 64, handler="main.handler", size=1, created_at=0.0)
    version.bundle_sha256 = "b" * 64
    return FunctionRecord(
        name=name,
        config=FunctionConfig(handler="main.handler", memory_mb=128),
        versions={version.sha256: version},
        aliases={"latest": version.sha256},
        created_at=0.0,
        updated_at=0.0,
        revision=1,
    )


def make(tmp_path: Path, clock: Clock) -> tuple[Warmer, Pool]:
    cfg = NodeConfig(
        role="pop",
        name="pop-1",
        data_dir=str(tmp_path),
        profile_slot_s=SLOT,
        profile_slots=24,
        prewarm_lead_s=SLOT,
        idle_ttl_s=600.0,
    )
    factory = LoadedFactory()
    pool = Pool(factory, capacity_mb=1024)  # type: ignore[arg-type]
    catalog = Catalog(tmp_path / "registry.db", Keyring(b"k" * 32))
    catalog.apply(1, [record("daily")])
    specs = Specs(lambda sha: tmp_path / sha)
    profile = load_profile(cfg, tmp_path / "profile.bin")
    placer = Placer(
        cfg,
        pool,
        Regions([], httpx.AsyncClient()),
        factory,  # type: ignore[arg-type]
        Measurements(),
        code_cached=lambda spec: True,
        profile=profile,
        wall_clock=clock,
    )

    async def ensure_code(version: Version) -> None:
        return None

    async def ensure_secrets(fn: FunctionRecord) -> None:
        return None

    warmer = Warmer(
        cfg,
        profile,
        tmp_path / "profile.bin",
        placer=placer,
        pool=pool,
        catalog=catalog,
        specs=specs,
        ensure_code=ensure_code,
        ensure_secrets=ensure_secrets,
        clock=clock,
    )
    return warmer, pool


def learn_daily_peak(profile: WeeklyProfile, days: int) -> None:
    """Ten requests in the peak slot of each past day, nothing else."""
    for day in range(days):
        for i in range(10):
            profile.hit("daily", day * DAY + PEAK_SLOT * SLOT + i)


async def test_a_function_is_warmed_shortly_before_its_usual_peak(tmp_path: Path) -> None:
    clock = Clock(0.0)
    warmer, pool = make(tmp_path, clock)
    learn_daily_peak(warmer.profile, days=5)

    clock.now = 5 * DAY + (PEAK_SLOT - 1) * SLOT + 30  # half a slot before the peak
    plan = await warmer.step()

    assert [p.function for p in plan.prewarm] == ["daily"]
    assert pool.held() == {"daily": 1}
    assert pool.view(warmer.specs.get(record("daily"), record("daily").resolve(None))).idle == 1


async def test_nothing_is_warmed_far_from_the_peak(tmp_path: Path) -> None:
    clock = Clock(0.0)
    warmer, pool = make(tmp_path, clock)
    learn_daily_peak(warmer.profile, days=5)

    clock.now = 5 * DAY + 3 * SLOT
    plan = await warmer.step()

    assert plan.prewarm == ()
    assert pool.held() == {}


async def test_sandboxes_warmed_for_a_peak_are_let_go_after_it(tmp_path: Path) -> None:
    clock = Clock(0.0)
    warmer, pool = make(tmp_path, clock)
    learn_daily_peak(warmer.profile, days=5)
    clock.now = 5 * DAY + (PEAK_SLOT - 1) * SLOT + 30
    await warmer.step()
    assert pool.held() == {"daily": 1}

    clock.now = 5 * DAY + (PEAK_SLOT + 4) * SLOT
    plan = await warmer.step()

    assert [r.function for r in plan.release] == ["daily"]
    assert pool.held() == {}


async def test_the_profile_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(0.0)
    warmer, _pool = make(tmp_path, clock)
    learn_daily_peak(warmer.profile, days=5)
    warmer.save()

    again, pool = make(tmp_path, clock)
    clock.now = 5 * DAY + (PEAK_SLOT - 1) * SLOT + 30
    plan = await again.step()

    assert [p.function for p in plan.prewarm] == ["daily"]
    assert pool.held() == {"daily": 1}


async def test_the_profile_raises_the_rate_placement_sees_during_the_peak(
    tmp_path: Path,
) -> None:
    clock = Clock(0.0)
    warmer, _pool = make(tmp_path, clock)
    learn_daily_peak(warmer.profile, days=5)

    clock.now = 5 * DAY + 3 * SLOT
    off_peak = warmer.placer.rate("daily")
    clock.now = 5 * DAY + PEAK_SLOT * SLOT
    at_peak = warmer.placer.rate("daily")

    assert off_peak == 0.0
    assert at_peak > 0.1  # ten requests a one-minute slot
