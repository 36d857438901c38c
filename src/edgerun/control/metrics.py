"""The control plane's Prometheus metrics (``GET /metrics``, cluster admin only).

Counted in plain ints on the event loop (as a node does, see
:mod:`edgerun.node.metrics`) and turned into metric families when scraped, in
a :class:`CollectorRegistry` of the app's own. The registry's revision is read
then: compare it with each node's ``edgerun_feed_revision`` for how far
behind a node is, even one whose feed no longer answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ControlMetrics(Collector):
    def __init__(self, revision: Callable[[], int]) -> None:
        self._revision = revision
        self.changes: dict[str, int] = {}
        """Registry writes by kind: deploy, delete, alias (set or deleted)."""
        self.feed_waiters = 0
        """Change-feed long-polls waiting right now (about one per node worker)."""
        self.feed_answers = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def changed(self, kind: str) -> None:
        self.changes[kind] = self.changes.get(kind, 0) + 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        revision = Metric(
            "edgerun_control_revision",
            "The registry's revision (nodes apply it: edgerun_feed_revision).",
            "gauge",
        )
        revision.add_sample("edgerun_control_revision", {}, float(self._revision()))
        yield revision
        changes = Metric(
            "edgerun_control_changes",
            "Registry changes through the API: deploy, delete, alias (set or deleted).",
            "counter",
        )
        for kind in sorted({"deploy", "delete", "alias", *self.changes}):
            n = float(self.changes.get(kind, 0))
            changes.add_sample("edgerun_control_changes_total", {"kind": kind}, n)
        yield changes
        waiters = Metric(
            "edgerun_control_feed_waiters", "Change-feed long-polls waiting now.", "gauge"
        )
        waiters.add_sample("edgerun_control_feed_waiters", {}, float(self.feed_waiters))
        yield waiters
        answers = Metric(
            "edgerun_control_feed_answers", "Change-feed requests answered.", "counter"
        )
        answers.add_sample("edgerun_control_feed_answers_total", {}, float(self.feed_answers))
        yield answers
