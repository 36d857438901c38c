"""A node, composed: registry copy, code cache, pool, regions, placement, invoke path, API.

Region and POP run this same code (``cfg.role`` tells them apart). The
invoke path lives in :mod:`edgerun.node.invoke`, the API beside it in
:mod:`edgerun.node.admin`, counters and caches in :mod:`edgerun.node.state`;
this module builds them, wires them together and runs their background
tasks for the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from edgerun.auth import Keyring, NodeCredential
from edgerun.config import NodeConfig
from edgerun.errors import ApiError
from edgerun.http import EXCEPTION_HANDLERS
from edgerun.models import FunctionRecord
from edgerun.node import admin
from edgerun.node.catalog import Catalog, follow
from edgerun.node.code_cache import CodeCache
from edgerun.node.dispatcher import Dispatcher
from edgerun.node.events import EventQueue
from edgerun.node.front import Front
from edgerun.node.heartbeat import heartbeat_forever
from edgerun.node.invoke import Incoming, Invoker, Reply
from edgerun.node.lambda_api import LambdaInvoke
from edgerun.node.logs import Journal
from edgerun.node.metrics import NodeMetrics, Peers
from edgerun.node.placer import Measurements, Placer
from edgerun.node.regions import Regions
from edgerun.node.secrets import SecretCache
from edgerun.node.signing import SigningKeys
from edgerun.node.state import Counters, InitErrors, Specs
from edgerun.node.warmer import Warmer, load_profile
from edgerun.node.workers import HitsLink, Seat, hits_only, worker_dir
from edgerun.pool import Budget, Pool
from edgerun.sandbox.base import SandboxFactory, SandboxSpec
from edgerun.sandbox.broker import BrokerClient, Link
from edgerun.sandbox.isolation import Layer
from edgerun.tls import client_verify
from edgerun.tracing import cold_started, make_tracer

log = logging.getLogger("edgerun.node")

RELIEVE_EVERY_S = 0.05
REFILL_S = 600.0
"""How often a region looks for code it should hold and does not."""
LOG_FLUSH_S = 0.2
"""Invocation records reach the disk (and the other workers' queries) this often."""


class NodeApp:
    def __init__(
        self,
        cfg: NodeConfig,
        credential: NodeCredential,
        factory: SandboxFactory,
        *,
        isolation: list[Layer] | None = None,
        seat: Seat | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``seat``: this process is one worker of a multi-worker node, whose
        ``budget`` it shares."""
        self.cfg = cfg
        self.seat = seat
        self.factory = factory
        self.isolation = isolation or []
        self.credential = credential
        self.keyring = Keyring(bytes.fromhex(credential.hash_key))
        data = Path(cfg.data_dir)
        own = worker_dir(cfg, seat.index) if seat is not None else data
        verify = client_verify(cfg.tls)  # one trust for every call out, forwards included
        self.client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {credential.secret}"},
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            verify=verify,
        )
        self.catalog = Catalog(own / "registry.db", self.keyring)
        upstreams = [r.url.rstrip("/") for r in cfg.regions] if cfg.role == "pop" else []
        upstreams.append(cfg.control_url.rstrip("/"))
        self.code = CodeCache(
            own,
            self.client,
            upstreams,
            max_uncompressed=cfg.max_bundle_bytes,
            limit_bytes=(cfg.code_cache_mb << 20) // (seat.count if seat else 1),
            in_use=self._code_in_use,
        )
        self.secrets = SecretCache(self.client, cfg.control_url)
        self.specs = Specs(self.code.code_dir, self.secrets.cached)
        self.measured = Measurements()
        self.pool = Pool(
            factory,
            capacity_mb=cfg.capacity_mb,
            max_per_function=cfg.max_per_function,
            max_queue=cfg.max_queue,
            queue_timeout_s=cfg.queue_timeout_s,
            idle_ttl_s=cfg.idle_ttl_s,
            value=self._eviction_cost if cfg.role == "pop" else None,
            on_start=self._started,
            budget=budget,
        )
        self.regions = Regions(
            cfg.regions, self.client, verify=verify, max_body=cfg.max_payload_bytes + (64 << 10)
        )
        profile_path = data / "profile.bin"
        profile = load_profile(cfg, profile_path) if cfg.role == "pop" else None
        self.placer = Placer(
            cfg,
            self.pool,
            self.regions,
            factory,
            self.measured,
            code_cached=lambda spec: self.code.ready(self.specs.bundle_of[spec.version]),
            profile=profile,
        )
        if seat is not None:
            self.placer.outbox = {}
        workers = seat.count if seat else 1
        self.journal = Journal(
            data / "invocations",
            writer=f"w{seat.index}" if seat else "node",
            max_bytes=(cfg.log_retention_mb << 20) // workers,
            writers=[f"w{i}" for i in range(seat.count)] if seat else ["node"],
        )
        self.log_queries = asyncio.Semaphore(2)
        """Log queries read files in threads: two at a time, whoever asks."""
        self.init_errors = InitErrors()
        self.counters = Counters()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first_to_stop: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.invoker = Invoker(
            cfg,
            credential,
            self.keyring,
            catalog=self.catalog,
            code=self.code,
            pool=self.pool,
            regions=self.regions,
            placer=self.placer,
            specs=self.specs,
            secret_cache=self.secrets,
            counters=self.counters,
            init_errors=self.init_errors,
            journal=self.journal,
            spawn=self._spawn,
            stop_function=self._stop_function,
        )
        if seat is not None:
            self.invoker.worker = str(seat.index)
        self.metrics: NodeMetrics | None = None
        self.metric_peers: Peers | None = None
        if cfg.metrics:
            self.metrics = NodeMetrics(cfg.name, cfg.role, max_functions=cfg.metrics_max_functions)
            self.metrics.watch(
                pool=self.pool, regions=self.regions, catalog=self.catalog, code=self.code
            )
            self.invoker.metrics = self.metrics
            if seat is not None:  # a scrape must show the whole node: see node/metrics.py
                dirs = [worker_dir(cfg, i) for i in range(seat.count)]
                self.metric_peers = Peers(dirs, seat.index, self.metrics.snapshot)
        # Each worker process exports its own spans; None (no SDK loaded) without an endpoint.
        self.tracer = make_tracer(cfg, None if seat is None else str(seat.index))
        self.invoker.tracer = self.tracer
        self.warmer = (
            Warmer(
                cfg,
                profile,
                profile_path,
                placer=self.placer,
                pool=self.pool,
                catalog=self.catalog,
                specs=self.specs,
                ensure_code=self.invoker.ensure_code,
                ensure_secrets=self.secrets.ensure,
                writer=seat is None or seat.index == 0,  # one profile file per node
            )
            if profile is not None
            else None
        )
        self.events = EventQueue(
            data / "events.db", owner=str(seat.index) if seat is not None else "0"
        )
        self.dispatcher = Dispatcher(cfg, self.events, self.invoker, self.catalog)
        self.invoker.events = self.events
        if self.metrics is not None:
            self.metrics.events = self.events
        self.invoker.on_queued = self.dispatcher.wake
        self.lambda_invoke = LambdaInvoke(self.invoker, SigningKeys(self.client, cfg.control_url))
        self.asgi = Front(
            self.invoker.check,
            self.invoker,
            Starlette(
                routes=admin.routes(self),
                exception_handlers=EXCEPTION_HANDLERS,
                lifespan=self._lifespan,
            ),
            max_payload_bytes=cfg.max_payload_bytes,
            body_timeout_s=cfg.body_timeout_s,
            lambda_api=self._lambda_api,
        )

    # --- lifecycle ---------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        await self.factory.open()
        self._tasks = [
            asyncio.create_task(
                follow(
                    self.catalog,
                    self.client,
                    self.cfg.control_url.rstrip("/"),
                    wait_s=self.cfg.feed_wait_s,
                    on_change=self._on_change,
                )
            ),
            asyncio.create_task(self._reap_forever()),
            asyncio.create_task(self._flush_logs_forever()),
            asyncio.create_task(self.dispatcher.run_forever()),
            asyncio.create_task(self._keep_code()),
        ]
        self._first_to_stop = [self._tasks[0]]  # follow()
        if self.seat is None or self.seat.index == 0:  # one heartbeat per node
            self._tasks.append(asyncio.create_task(heartbeat_forever(self)))
            self._first_to_stop.append(self._tasks[-1])
        if self.cfg.role == "pop" and self.regions.regions:
            self._tasks.append(asyncio.create_task(self.regions.monitor()))
            self._first_to_stop.append(self._tasks[-1])
        if self.warmer is not None:
            self._tasks.append(asyncio.create_task(self.warmer.run_forever()))
        if self.seat is not None:
            self._tasks += [
                asyncio.create_task(self._hits_link().run()),
                asyncio.create_task(self._relieve_forever()),
            ]
        if self.metric_peers is not None:
            self._tasks.append(asyncio.create_task(self.metric_peers.serve()))
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.warmer is not None:
                self.warmer.save()
            self.journal.flush()
            self.events.close()
            self.catalog.close()
            await self.pool.close()
            await self.regions.close()
            await self.client.aclose()
            if self.tracer is not None:
                await asyncio.to_thread(self.tracer.shutdown)  # flush what is queued

    def stopping(self) -> None:
        """The server was told to stop (any thread, a signal handler included): stop
        following the change feed and checking regions now, not after the calls in
        flight (a control plane or region stopping too would only be found gone)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for task in self._first_to_stop:
                loop.call_soon_threadsafe(task.cancel)

    async def _lambda_api(
        self, method: str, path: str, req: Incoming, read: Callable[[Incoming], Awaitable[bytes]]
    ) -> Reply:
        return await self.lambda_invoke(method, path, req, read)

    async def _on_change(self, records: list[FunctionRecord], unreferenced: set[str]) -> None:
        """Stop what deleted functions still run, drop code nothing refers to, and
        (a region) queue the code of every version: a region keeps everything its
        POPs may forward, while a POP fetches code when it first runs it here, or
        ahead of a peak its time-of-day profile expects (the warmer)."""
        deleted = [r.name for r in records if r.deleted]
        if deleted:
            await asyncio.gather(*(self._stop_function(name) for name in deleted))
        if self.cfg.role == "region":
            self.code.want(
                v.bundle_sha256 for r in records if not r.deleted for v in r.versions.values()
            )
        if unreferenced:
            self.code.unwant(unreferenced)
            self.collect_code(unreferenced)

    def collect_code(self, candidates: set[str] | None = None) -> list[str]:
        """Remove bundles no version in the registry refers to (of ``candidates``, or
        of all on disk), unless a sandbox, a zygote or a fetch still uses them;
        returns the removed hashes. Only once the registry copy is caught up: a
        node serving from a stale or partial copy keeps all."""
        on_disk = self.code.cached()
        if candidates is not None:
            on_disk &= candidates
        return self._collect(on_disk, self.catalog.referenced(on_disk))

    async def collect_all_code(self) -> list[str]:
        """:meth:`collect_code` over every bundle on disk, the index read in a thread
        (a region holds every bundle of the cluster)."""
        on_disk = self.code.cached()
        referenced = await asyncio.to_thread(self.catalog.referenced, on_disk)
        # A batch applied meanwhile may refer to some again (a redeploy of the same
        # code, a rollback): the few that look unused are checked once more here.
        unused = on_disk - referenced
        return self._collect(unused, self.catalog.referenced(unused))

    def _collect(self, on_disk: set[str], referenced: set[str]) -> list[str]:
        if not self.catalog.caught_up:
            return []
        in_use = self._code_in_use()
        if in_use is None:
            return []  # a live version whose code is unknown: remove nothing
        removed = sorted(on_disk - referenced - in_use - self.code.inflight())
        for sha in removed:
            self.code.remove(sha)
        self.specs.drop_bundles(set(removed))
        if removed:
            log.info("collected %d bundle(s): %s", len(removed), [s[:12] for s in removed[:20]])
        return removed

    def _code_in_use(self) -> set[str] | None:
        """Bundles of versions with a sandbox slot or a loaded zygote (None when
        one of them was built before this node knew its bundle)."""
        live = self.pool.live_versions() | self.factory.loaded_versions()
        bundle_of = self.specs.bundle_of
        if any(vid not in bundle_of for vid in live):
            return None
        return {bundle_of[vid] for vid in live}

    async def _stop_function(self, name: str) -> None:
        """A deleted function: its idle sandboxes and zygotes stop now, busy ones when
        their call ends; its memory charge is freed with them."""
        try:
            await self.pool.stop_function(name)
        except Exception:
            log.exception("stopping deleted function %s failed", name)
        self.specs.forget(name)
        self.secrets.forget(name)
        self.init_errors.forget(name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _keep_code(self) -> None:
        """Count the code on disk (off the start-up path), then prefetch what is
        queued; a region also queues, now and then, what it misses."""
        try:
            await self.code.scan()
        except Exception:  # the cache then counts only what this run fetches
            log.exception("counting the code on disk failed")
        jobs = [self.code.prefetch_forever()]
        if self.cfg.role == "region":
            jobs.append(self._fill_code_cache_forever())
        await asyncio.gather(*jobs)

    async def _fill_code_cache_forever(self) -> None:
        """A region, once caught up after a start and every ``REFILL_S`` after: queue
        the code it does not hold (what a previous run had queued and not
        fetched, prefetches that failed every try, what a full cache dropped)."""
        while True:
            while not self.catalog.caught_up:
                await asyncio.sleep(0.5)
            try:
                missing = await asyncio.to_thread(self.catalog.all_bundles)
                self.code.want(sorted(missing - self.code.cached()))
            except Exception:
                log.exception("listing the code this region should hold failed")
            await asyncio.sleep(REFILL_S)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.cfg.idle_ttl_s / 2))
            await self.pool.reap_idle()
            if await self.factory.reap_idle():
                self.pool.wake()  # zygote memory came free: waiters may fit now
            await self.collect_all_code()

    async def _flush_logs_forever(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            self.journal.flush()

    def _hits_link(self) -> HitsLink:
        """Popularity to and from the node's other workers: over the engine's link
        when the supervisor lends sandboxes, else over a link of its own."""
        assert self.seat is not None
        if isinstance(self.factory, BrokerClient):
            self.factory.on_hits = self.placer.merge_hits
            return HitsLink(self.factory.link.send, self.placer.take_outbox)
        link = Link(
            socket.socket(fileno=self.seat.coordinator_fd), hits_only(self.placer.merge_hits)
        )
        link.start()
        return HitsLink(link.send, self.placer.take_outbox)

    async def _relieve_forever(self) -> None:
        """Free idle memory another worker of this node asked for (see Pool.relieve)."""
        while True:
            await asyncio.sleep(RELIEVE_EVERY_S)
            if self.pool.budget.pressure() is not None:
                try:
                    await self.pool.relieve()
                except Exception:
                    log.exception("freeing memory for another worker failed")

    def _eviction_cost(self, function: str, version: str, zygote_loaded: bool) -> float:
        return self.placer.eviction_cost(function, version, zygote_loaded)

    def _started(self, spec: SandboxSpec, ms: float, loaded_before: bool) -> None:
        self.measured.start_observed(spec.version, ms, loaded_before=loaded_before)
        if self.metrics is not None:
            self.metrics.started(ms, loaded_before)
        cold_started(ms, loaded_before)  # a "cold start" span when a traced call waited for it

    async def scrape(self) -> bytes:
        """The ``/metrics`` answer, for the whole node (every worker of it)."""
        assert self.metrics is not None
        if self.metric_peers is None:
            return self.metrics.exposition()
        others = await self.metric_peers.gather()
        if len(others) < self.metric_peers.count - 1:
            # Without a worker's counts the totals would drop, and Prometheus would read
            # the drop as a counter reset (a spike in rate()): a failed scrape is honest.
            raise ApiError(
                503,
                "Unavailable",
                f"{self.metric_peers.count - 1 - len(others)} worker(s) of this node did not "
                "answer in time; try again",
            )
        return self.metrics.exposition(others, workers=self.metric_peers.count)
