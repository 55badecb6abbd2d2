"""Prometheus metrics, one registry per gateway app so that tests and workers never share counters.

Labels are bounded: route ids (from config), decisions, status codes, outcomes. Never a raw path or a token.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Latencies:
    """One histogram series: a count per bucket (not cumulative) and a sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(floatToGoString, _LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Tally:
    """One counter series: a plain int (see HotPathStats)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyFamily:
    """A counter with one label, as prometheus-client's `Counter(...).labels(value)` is used, lock-free."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.series: dict[str, Tally] = {}

    def labels(self, value: str) -> Tally:
        tally = self.series.get(value)
        if tally is None:
            tally = self.series[value] = Tally()
        return tally

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, tally in self.series.items():
            family.add_metric([value], tally.value)
        return family


class HotPathStats(Collector):
    """The per-request series, in plain ints and floats, rendered by prometheus-client at scrape time.

    prometheus-client's own Counter and Histogram take a lock per increment, for threads the gateway does not
    have: its requests, and its /metrics scrapes, all run on one event loop. Per request that was 8 lock round
    trips (docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests: dict[tuple[str, str, int], int] = {}  # (route, decision, status)
        self.request_seconds: dict[str, _Latencies] = {}
        self.upstream_seconds: dict[str, _Latencies] = {}
        self.cache = TallyFamily("gateway_introspection_cache", "Introspection cache lookups by result", "result")

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests", "Requests by route, decision and status", labels=["route", "decision", "status"]
        )
        for (route, decision, status), count in self.requests.items():
            requests.add_metric([route, decision, str(status)], count)
        yield requests
        yield _histogram("gateway_request_duration_seconds", "Whole request latency", "route", self.request_seconds)
        yield GaugeMetricFamily("gateway_requests_in_flight", "Requests being served", value=self.in_flight)
        yield _histogram(
            "gateway_upstream_duration_seconds",
            "Time to the upstream's response headers",
            "upstream",
            self.upstream_seconds,
        )
        yield self.cache.family()


def _histogram(name: str, documentation: str, label: str, series: dict[str, _Latencies]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, latencies in series.items():
        family.add_metric([value], latencies.buckets(), latencies.total)
    return family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hot = HotPathStats()
        r.register(self.hot)
        self.introspections = Counter(
            "gateway_introspection_requests", "Calls to the introspection endpoint by outcome", ["outcome"], registry=r
        )
        self.introspection_seconds = Histogram(
            "gateway_introspection_duration_seconds", "Introspection call latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cache = self.hot.cache  # a lookup per request: lock-free like the request series
        self.reloads = Counter("gateway_config_reloads", "Config reloads by result", ["result"], registry=r)
        self.websockets_open = Gauge(
            "gateway_websockets_open", "Relayed WebSockets open, by route", ["route"], registry=r
        )
        self.websocket_closes = Counter(
            "gateway_websocket_closes", "Relayed WebSockets closed, by reason", ["reason"], registry=r
        )

    def request_started(self) -> None:
        self.hot.in_flight += 1

    def request_ended(self) -> None:
        self.hot.in_flight -= 1

    def request_done(self, route: str, decision: str, status: int, seconds: float) -> None:
        hot = self.hot
        key = (route, decision, status)
        hot.requests[key] = hot.requests.get(key, 0) + 1
        latencies = hot.request_seconds.get(route)
        if latencies is None:
            latencies = hot.request_seconds[route] = _Latencies()
        latencies.observe(seconds)

    def upstream_done(self, upstream: str, seconds: float) -> None:
        latencies = self.hot.upstream_seconds.get(upstream)
        if latencies is None:
            latencies = self.hot.upstream_seconds[upstream] = _Latencies()
        latencies.observe(seconds)
