"""Prometheus metrics, one registry per gateway app so that tests and workers never share counters.

Labels are bounded: route ids (from config), decisions, status codes, outcomes. Never a raw path or a token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests by route, decision and status", ["route", "decision", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Whole request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being served", registry=r)
        self.upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds",
            "Time to the upstream's response headers",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.introspections = Counter(
            "gateway_introspection_requests", "Calls to the introspection endpoint by outcome", ["outcome"], registry=r
        )
        self.introspection_seconds = Histogram(
            "gateway_introspection_duration_seconds", "Introspection call latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cache = Counter(
            "gateway_introspection_cache", "Introspection cache lookups by result", ["result"], registry=r
        )
        self.reloads = Counter("gateway_config_reloads", "Config reloads by result", ["result"], registry=r)
        # labels() costs a lock and a tuple build per call; the hot path keeps the children it has resolved.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._upstream_children: dict[str, Histogram] = {}

    def request_done(self, route: str, decision: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, decision, status))
        if children is None:
            children = (self.requests.labels(route, decision, str(status)), self.request_seconds.labels(route))
            self._request_children[(route, decision, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_done(self, upstream: str, seconds: float) -> None:
        child = self._upstream_children.get(upstream)
        if child is None:
            child = self._upstream_children[upstream] = self.upstream_seconds.labels(upstream)
        child.observe(seconds)
