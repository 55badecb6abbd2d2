"""`tracing:` in the config: off by default; the keys, the standard OTEL_* variables, and the errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import ConfigError, TracingSettings, load_config, parse_config
from gateway.ops.tracing import Tracer

from .support import ENV, gateway_document


def tracing_of(section: Any, env: dict[str, str] | None = None) -> TracingSettings | None:
    document = gateway_document(issuer="https://idp.example", upstream_url="http://127.0.0.1:1")
    if section is not None:
        document["tracing"] = section
    return parse_config(document, source="t.yaml", env={**ENV, **(env or {})}).tracing


@pytest.mark.parametrize(
    "section, env, expected",
    [
        (None, {}, None),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),  # off unless enabled
        ({"enabled": False, "endpoint": "http://c:4318/v1/traces"}, {}, None),
        ({"enabled": "false"}, {}, None),  # as ${TRACING_ENABLED:-false} gives it
        ({"enabled": True}, {}, TracingSettings()),
        ({"enabled": "true"}, {"OTEL_SDK_DISABLED": "true"}, None),
        (
            {"enabled": True, "endpoint": "https://c.example/v1/traces", "service_name": "edge", "sampling_ratio": 0},
            {},
            TracingSettings("https://c.example/v1/traces", "edge", 0.0),
        ),
        (
            {"enabled": True},
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
                "OTEL_SERVICE_NAME": "from-env",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25",
            },
            TracingSettings("http://collector:4318/v1/traces", "from-env", 0.25),
        ),
        (
            {"enabled": True},
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:1"},
            TracingSettings("http://t:4318/x"),
        ),
        (  # the file's keys win over the variables
            {"enabled": True, "endpoint": "http://file:4318/v1/traces", "service_name": "file", "sampling_ratio": 1},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_SERVICE_NAME": "env"},
            TracingSettings("http://file:4318/v1/traces", "file", 1.0),
        ),
    ],
)
def test_tracing_settings(section: Any, env: dict[str, str], expected: TracingSettings | None) -> None:
    assert tracing_of(section, env) == expected


@pytest.mark.parametrize(
    "section, env, problem",
    [
        ({"enabled": True, "sampling_ratio": 2}, {}, "tracing.sampling_ratio: expected a number from 0 to 1"),
        ({"enabled": True, "sampling_ratio": -1}, {}, "tracing.sampling_ratio: expected a number >= 0"),
        ({"enabled": True, "endpoint": "collector:4318"}, {}, "tracing.endpoint: expected an http(s) URL"),
        ({"enabled": "yes"}, {}, "tracing.enabled: expected true or false"),
        ({"enabled": True, "exporter": "zipkin"}, {}, "tracing.exporter: unknown key"),
        (
            {"enabled": True},
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG.ratio: expected a number",
        ),
    ],
)
def test_tracing_errors(section: Any, env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tracing_of(section, env)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_the_sampling_decision_made_here_is_the_sdks(ratio: float) -> None:
    """An unsampled request never reaches the SDK; a sampled one must be sampled by the SDK's sampler too."""
    exported = InMemorySpanExporter()
    tracer = Tracer(TracingSettings(sampling_ratio=ratio), exporter=exported)
    try:
        spans = [tracer.server_span("GET", {}, "http", "127.0.0.1") for _ in range(400)]
        sampled = [s for s in spans if s.span is not None]
        for span in sampled:
            assert span.span is not None and span.span.is_recording()
            assert span.span.get_span_context().trace_id == span.trace_id  # the id the decision was made on
            span.finish(None, "-", 200, "allow", "ok", "proxy")
        if ratio in (0.0, 1.0):
            assert len(sampled) == 400 * ratio
        else:
            assert 0 < len(sampled) < 400
        tracer.force_flush()
        assert len(exported.get_finished_spans()) == len(sampled)
    finally:
        tracer.provider.shutdown()


def test_the_shipped_config_is_off_until_tracing_enabled() -> None:
    shipped = Path(__file__).resolve().parents[1] / "config.yaml"
    env = {**ENV, "ZITADEL_DOMAIN": "https://idp.example"}
    assert load_config(shipped, env).tracing is None
    on = {**env, "TRACING_ENABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert load_config(shipped, on).tracing == TracingSettings("http://collector:4318/v1/traces")


def test_client_span_urls_carry_no_query_and_no_credentials() -> None:
    exported = InMemorySpanExporter()
    tracer = Tracer(TracingSettings(sampling_ratio=1), exporter=exported)
    try:
        span = tracer.server_span("GET", {}, "http", "127.0.0.1")
        upstream: CIMultiDict[str] = CIMultiDict({"tracestate": "client=1"})
        exchange = span.upstream("GET", "http://user:pw@backend:8080/base", "/a?access_token=t#f", upstream)
        assert exchange is not None
        exchange.end()
        span.finish(None, "/a", 200, "allow", "ok", "proxy")
        tracer.force_flush()
        [client] = [s for s in exported.get_finished_spans() if s.name == "upstream GET"]
        assert client.attributes is not None
        assert client.attributes["url.full"] == "http://backend:8080/base/a"
        assert (client.attributes["server.address"], client.attributes["server.port"]) == ("backend", 8080)
        assert "tracestate" not in upstream  # ours has none: the client's is not relayed as if it were
    finally:
        tracer.provider.shutdown()
