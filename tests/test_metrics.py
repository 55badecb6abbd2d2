"""The hot-path series are plain numbers rendered at scrape time: they must read exactly as prometheus-client's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.ops.metrics import _LATENCY_BUCKETS, Metrics

SAMPLES = (0.0, 0.0005, 0.0007, 0.001, 0.003, 0.05, 0.25, 0.2500001, 9.99, 10.0, 42.0)


def _series(text: str, prefix: str) -> list[str]:
    """The samples under `prefix`, without `_created` (a start time that only prometheus-client's own carry)."""
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(prefix) and not line.startswith("#") and "_created" not in line.split("{")[0]
    )


def test_request_series_read_as_prometheus_client_renders_them() -> None:
    ours = Metrics()
    theirs = CollectorRegistry()
    requests = Counter("gateway_requests", "", ["route", "decision", "status"], registry=theirs)
    seconds = Histogram("gateway_request_duration_seconds", "", ["route"], buckets=_LATENCY_BUCKETS, registry=theirs)
    upstream = Histogram(
        "gateway_upstream_duration_seconds", "", ["upstream"], buckets=_LATENCY_BUCKETS, registry=theirs
    )
    in_flight = Gauge("gateway_requests_in_flight", "", registry=theirs)
    cache = Counter("gateway_introspection_cache", "", ["result"], registry=theirs)
    for result, amount in (("hit", 1), ("evicted", 3), ("hit", 1), ("miss", 1)):
        ours.cache.labels(result).inc(amount)
        cache.labels(result).inc(amount)
    for i, value in enumerate(SAMPLES):
        route, status = ("a", 200) if i % 3 else ("b", 403)
        ours.request_done(route, "allow" if status == 200 else "deny", status, value)
        requests.labels(route, "allow" if status == 200 else "deny", str(status)).inc()
        seconds.labels(route).observe(value)
        ours.upstream_done("default", value)
        upstream.labels("default").observe(value)
    ours.request_started()
    ours.request_started()
    ours.request_ended()
    in_flight.set(1)

    mine, reference = generate_latest(ours.registry).decode(), generate_latest(theirs).decode()
    for prefix in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_",
        "gateway_upstream_duration_seconds_",
        "gateway_requests_in_flight",
        "gateway_introspection_cache_total",
    ):
        assert _series(mine, prefix) == _series(reference, prefix), prefix
        assert _series(mine, prefix)  # something to compare
