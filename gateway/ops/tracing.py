"""OpenTelemetry traces: one server span per request, named by its route id, and child spans for the introspection
(cache hit or miss, and the IdP call under a miss), the JWKS fetch and the upstream exchange; exported over
OTLP/HTTP by the SDK's batch processor (a thread of its own, off the event loop).

Off (no `tracing:`), nothing here runs: the transports test one attribute per request. On, the W3C `traceparent`
and `tracestate` of the client are continued and a new `traceparent` goes to the upstream. Sampling is
parent-based: a client's sampled flag is followed, and a trace that starts here is sampled at `sampling_ratio`.
An unsampled request never reaches the SDK: its ids are drawn and propagated here, which keeps the cost of
tracing with ratio 0 to a couple of µs (docs/benchmarks.md); the decision is the SDK's own rule (the trace id's
low 64 bits under ratio * 2^64), so that a trace sampled here is sampled by the SDK too.

Attributes follow the HTTP semantic conventions (method, route, status, the canonical path); never a header value,
a token or a query string.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.config import TracingSettings

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from gateway.policy.rules import Route

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_LOW_64 = (1 << 64) - 1
_NULL: nullcontext[None] = nullcontext()
_TRACER = otel_context.create_key("zitadel-gateway-tracer")
Span = otel_trace.Span


class _PresetTraceIds(RandomIdGenerator):
    """The SDK's id generator, except that the next root trace id can be handed in: the one the sampling decision
    was made on here. The event loop's thread is the only one that starts spans."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        preset, self.next_trace_id = self.next_trace_id, 0
        return preset or super().generate_trace_id()


class Tracer:
    """One per process (made at start: `tracing` applies at the next start, like `listen`)."""

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self._ids = _PresetTraceIds()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sampling_ratio)),
            id_generator=self._ids,
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=settings.endpoint)))
        self._tracer = self.provider.get_tracer("zitadel-gateway", __version__)
        self._bound = round(settings.sampling_ratio * (_LOW_64 + 1))  # TraceIdRatioBased's own rule
        self._propagator = TraceContextTextMapPropagator()

    def server_span(self, method: str, headers: Mapping[str, str], scheme: str, client: str) -> RequestSpan:
        """The request's span: continued from the client's `traceparent` (and `tracestate`), or a new trace."""
        parent_context = None
        trace_state = None
        if TRACEPARENT in headers:
            parent_context = self._propagator.extract(headers)
            parent = otel_trace.get_current_span(parent_context).get_span_context()
            if parent.is_valid:
                if not parent.trace_flags.sampled:  # parent-based: the client decided
                    return RequestSpan(None, parent.trace_id, parent.trace_state.to_header() or None)
                trace_state = parent.trace_state
            else:
                parent_context = None
        if parent_context is None:
            trace_id = random.getrandbits(128) or 1
            if trace_id & _LOW_64 >= self._bound:
                return RequestSpan(None, trace_id, None)
            self._ids.next_trace_id = trace_id
        span = self._tracer.start_span(
            method,
            context=parent_context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": scheme, "client.address": client},
        )
        state = trace_state.to_header() if trace_state else None
        return RequestSpan(span, span.get_span_context().trace_id, state or None, self._tracer)

    def force_flush(self) -> bool:
        return self.provider.force_flush()

    async def close(self) -> None:
        """Export what is left (blocking on the network, so in a thread) and stop the exporter's thread."""
        await asyncio.get_running_loop().run_in_executor(None, self.provider.shutdown)


class RequestSpan:
    """A request's place in its trace. `span` is None when the trace is not sampled: then only ids are kept, to
    log and to propagate."""

    __slots__ = ("_context", "_tracer", "span", "trace_id", "trace_id_hex", "tracestate")

    def __init__(
        self, span: Span | None, trace_id: int, tracestate: str | None, tracer: otel_trace.Tracer | None = None
    ) -> None:
        self.span = span
        self.trace_id = trace_id
        self.trace_id_hex = f"{trace_id:032x}"
        self.tracestate = tracestate
        self._tracer = tracer
        # Children find the tracer in their context: the IdP call is started where no RequestSpan is at hand.
        self._context = (
            otel_trace.set_span_in_context(span, otel_context.set_value(_TRACER, tracer)) if span is not None else None
        )

    def child(self, name: str, kind: SpanKind, attributes: dict[str, Any]) -> Span | None:
        if self._tracer is None:
            return None
        return self._tracer.start_span(name, context=self._context, kind=kind, attributes=attributes)

    def instant(self, name: str, attributes: dict[str, Any]) -> None:
        """A child span for something that took no time of its own (a cache hit)."""
        child = self.child(name, SpanKind.INTERNAL, attributes)
        if child is not None:
            child.end()

    @contextmanager
    def current(self, name: str, attributes: dict[str, Any]) -> Iterator[None]:
        """An INTERNAL child span that is the current span inside the block (its callees' spans are its children)."""
        child = self.child(name, SpanKind.INTERNAL, attributes)
        if child is None:
            yield
            return
        token = otel_context.attach(otel_trace.set_span_in_context(child, self._context))
        try:
            yield
        except BaseException as exc:
            child.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            otel_context.detach(token)
            child.end()

    def upstream(self, method: str, base_url: str, path: str, headers: CIMultiDict[str]) -> Span | None:
        """The upstream exchange's span (sampled traces only), and the trace context in the headers sent upstream:
        the client's `traceparent` and `tracestate` are replaced by the continued ones."""
        if self._tracer is None:  # not sampled: the ids go on, nothing is recorded
            headers[TRACEPARENT] = f"00-{self.trace_id_hex}-{random.getrandbits(64) or 1:016x}-00"
            exchange = None
        else:
            exchange = self._tracer.start_span(
                f"upstream {method}",
                context=self._context,
                kind=SpanKind.CLIENT,
                attributes=_client_attributes(method, base_url + path),
            )
            headers[TRACEPARENT] = f"00-{self.trace_id_hex}-{exchange.get_span_context().span_id:016x}-01"
        if self.tracestate:
            headers[TRACESTATE] = self.tracestate
        else:
            headers.popall(TRACESTATE, None)
        return exchange

    def finish(self, route: Route | None, path: str, status: int, decision: str, reason: str, mode: str) -> str:
        """End the server span with what the request came to; the trace id, for the access-log line."""
        span = self.span
        if span is not None:
            span.update_name(route.id if route is not None else "unmatched")
            attributes: dict[str, Any] = {
                "http.response.status_code": status,
                "gateway.decision": decision,
                "gateway.reason": reason,
                "gateway.mode": mode,
            }
            if path != "-":
                attributes["url.path"] = path  # canonical; the query string is never recorded
            if route is not None:
                attributes["http.route"] = route.pattern.source
                attributes["gateway.route"] = route.id
            if status >= 500:
                attributes["error.type"] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attributes)
            span.end()
        return self.trace_id_hex


def _client_attributes(method: str, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        # Never the query string, nor credentials in the authority.
        "url.full": parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl(),
        "server.address": parts.hostname or "",
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    return attributes


def end_exchange(span: Span | None, status: int | None, error: BaseException | None = None) -> None:
    """End a CLIENT span with the answer's status, or the error that came instead."""
    if span is None:
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
    elif error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def introspection(request_span: RequestSpan | None, cache: str) -> AbstractContextManager[None]:
    """Around the token check (`cache`: hit or miss); inside it, the IdP call's span is its child."""
    if request_span is None or request_span.span is None:
        return _NULL
    return request_span.current("introspection", {"gateway.cache": cache})


def start_call(name: str, method: str, url: str) -> Span | None:
    """A CLIENT span for a call made on the gateway's own account (the IdP call, the JWKS fetch), a child of the
    current span when the request's trace is sampled; None otherwise. End it with `end_call`."""
    current = otel_context.get_current()
    tracer = otel_context.get_value(_TRACER, current)
    if not isinstance(tracer, otel_trace.Tracer) or not otel_trace.get_current_span(current).is_recording():
        return None
    return tracer.start_span(name, context=current, kind=SpanKind.CLIENT, attributes=_client_attributes(method, url))


def end_call(span: Span | None, outcome: str) -> None:
    """End a call's span with its outcome (`error` marks it failed)."""
    if span is None:
        return
    span.set_attribute("gateway.outcome", outcome)
    if outcome == "error":
        span.set_status(Status(StatusCode.ERROR))
    span.end()
