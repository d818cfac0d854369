"""Prometheus metrics of one gateway process (GET /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """A private registry per node so tests can run several nodes in one process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("sentchat_connections", "Open client connections", registry=r)
        self.subscriptions = Gauge("sentchat_subscriptions", "Channel subscriptions on this process", registry=r)
        self.commands = Counter("sentchat_commands", "Client commands by method", ["method"], registry=r)
        self.publications = Counter("sentchat_publications", "Publications accepted", ["source"], registry=r)
        self.deliveries = Counter("sentchat_deliveries", "Pushes written to client sockets", registry=r)
        self.errors = Counter("sentchat_errors", "Error replies and disconnects by code", ["code"], registry=r)
        self.command_seconds = Histogram(
            "sentchat_command_duration_seconds", "Client command latency", ["method"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.broker_events = Gauge(
            "sentchat_broker_events", "Broker events since start (reconnects, shard_resets, "
            "publish_errors, command_errors, messages, ...)", ["event"], registry=r)
        self.store_rows = Gauge("sentchat_store_committed_rows", "Durable publications committed",
                                registry=r)
        self.store_batches = Gauge("sentchat_store_batches", "Group-commit transactions", registry=r)
        self.api_requests = Counter("sentchat_api_requests", "Server API calls by method", ["method"], registry=r)

        # Labelled children cached: `labels(...)` costs ~1.5 µs per call on the hot path.
        self._command: dict[str, tuple[Any, Any]] = {}
        self._publication: dict[str, Any] = {}

    def command_done(self, method: str, seconds: float) -> None:
        """Count one client command and its latency."""
        children = self._command.get(method)
        if children is None:
            children = self._command[method] = (self.commands.labels(method),
                                                self.command_seconds.labels(method))
        children[0].inc()
        children[1].observe(seconds)

    def publication(self, source: str) -> None:
        child = self._publication.get(source)
        if child is None:
            child = self._publication[source] = self.publications.labels(source)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
