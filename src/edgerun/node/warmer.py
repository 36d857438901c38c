"""Warming by time of day: start a function's sandboxes shortly before its usual
peak at this POP, and let them go after it.

What to warm and what to release is decided by
:func:`edgerun.placement.plan_warming` from the POP's
:class:`~edgerun.placement.WeeklyProfile`; a background start may evict only
idle sandboxes that cost less to lose than its own would
(:func:`edgerun.placement.eviction_cost`, the order every eviction follows).
This class only gathers the inputs, acts, and keeps the profile on disk so
it survives a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from edgerun.config import NodeConfig
from edgerun.errors import ApiError
from edgerun.models import FunctionRecord, UnknownQualifier, Version
from edgerun.node import profile_store
from edgerun.node.catalog import Catalog
from edgerun.node.code_cache import BundleUnavailable
from edgerun.node.invoke import function_view
from edgerun.node.placer import Placer
from edgerun.node.state import Specs
from edgerun.placement import WarmPlan, WeeklyProfile, eviction_cost, fits_here, plan_warming
from edgerun.pool import Pool
from edgerun.sandbox.base import SandboxError

log = logging.getLogger("edgerun.node.warmer")


def load_profile(cfg: NodeConfig, path: Path) -> WeeklyProfile:
    """The profile saved by this node's last run, or a new one if it is missing or unreadable."""
    slot_s, slots, capacity = cfg.profile_slot_s, cfg.profile_slots, cfg.profile_capacity
    try:
        return profile_store.load(path, slot_s=slot_s, slots=slots, capacity=capacity)
    except ValueError as exc:
        log.warning("starting with an empty time-of-day profile: %s", exc)
        return WeeklyProfile(slot_s=slot_s, slots=slots, capacity=capacity)


class Warmer:
    def __init__(
        self,
        cfg: NodeConfig,
        profile: WeeklyProfile,
        path: Path,
        *,
        placer: Placer,
        pool: Pool,
        catalog: Catalog,
        specs: Specs,
        ensure_code: Callable[[Version], Awaitable[None]],
        ensure_secrets: Callable[[FunctionRecord], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        writer: bool = True,
    ) -> None:
        """``writer``: this process saves the profile (one worker of a node does)."""
        self.cfg = cfg
        self.writer = writer
        self.profile = profile
        self.path = path
        self.placer = placer
        self.pool = pool
        self.catalog = catalog
        self.specs = specs
        self._ensure_code = ensure_code
        self._ensure_secrets = ensure_secrets
        self._clock = clock

    @property
    def interval_s(self) -> float:
        """Often enough to act within the lead and within a slot."""
        return min(60.0, max(0.25, min(self.cfg.prewarm_lead_s, self.cfg.profile_slot_s) / 4))

    async def step(self) -> WarmPlan:
        """Plan from the profile at the clock's ``now``, start and release accordingly."""
        now = self._clock()
        plan = plan_warming(
            self.profile,
            now,
            lead_s=self.cfg.prewarm_lead_s,
            current_rate=self.placer.decayed_rate,
            held=self.pool.held(),
            run_s=lambda f: self.placer.measured.run_ms(f) / 1000,
            keep_alive_s=self.cfg.idle_ttl_s,
            max_per_function=self.cfg.max_per_function,
        )
        for item in plan.prewarm:
            fn = self.catalog.get(item.function)
            if fn is None or fn.config.placement == "region":
                continue
            if not fits_here(function_view(fn), self.placer.limits):
                continue
            try:
                version = fn.resolve(None)
                await self._ensure_secrets(fn)
                spec = self.specs.get(fn, version)
                below = eviction_cost(item.rate, self.placer.start_ms(spec), self.placer.tuning)
                await self._ensure_code(version)
                started = await self.pool.prewarm(spec, item.sandboxes, evict_below=below)
            except (BundleUnavailable, SandboxError, ApiError, UnknownQualifier) as exc:
                log.warning("warming %s ahead of its peak failed: %s", item.function, exc)
                continue
            if started:
                log.info("warmed %d sandbox(es) of %s ahead of its usual peak", started, fn.name)
        for release in plan.release:
            await self.pool.release_idle(release.function, release.sandboxes)
        return plan

    def save(self) -> None:
        self._write(self.profile.to_bytes())

    def _write(self, data: bytes) -> None:
        if not self.writer:
            return
        try:
            profile_store.write(data, self.path)
        except OSError as exc:
            log.warning("could not save the time-of-day profile: %s", exc)

    async def run_forever(self) -> None:
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.step()
            except Exception:
                log.exception("time-of-day warming failed")
            if time.monotonic() - last_save >= self.cfg.profile_save_s:
                # Serialised here, where requests change the profile; written off the loop.
                await asyncio.to_thread(self._write, self.profile.to_bytes())
                last_save = time.monotonic()
