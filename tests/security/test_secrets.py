"""Secrets: never in a log line, an error body or a metric; compared in constant time wherever compared."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.app import METRICS
from tests.conftest import GatewayFactory
from tests.secret_witness import Witness
from tests.support import CLIENT_SECRET, FakeIdP

from .raw import request, send

ROOT = Path(__file__).resolve().parents[2]


def test_witness_finds_a_planted_secret_wherever_it_is() -> None:
    for place in ("log", "body", "metrics"):
        witness = Witness(["demo-reader-token"])
        if place == "log":
            witness.emit(
                logging.LogRecord("gateway", logging.INFO, __file__, 1, "token %s", ("demo-reader-token",), None)
            )
        elif place == "body":
            witness.add("error body", '{"error":"x","error_description":"demo-reader-token"}')
        else:
            registry = CollectorRegistry()
            Counter("planted", "a label that must never hold a token", ["route"], registry=registry).labels(
                "demo-reader-token"
            ).inc()
            witness.registries.append(registry)
        assert witness.leaks(), place


async def test_the_session_witness_sees_gateway_logs_and_bodies(
    make_gateway: GatewayFactory, secret_witness: Witness
) -> None:
    gateway = await make_gateway()
    before = len(secret_witness.texts)
    await gateway.get("/api/private")
    seen = secret_witness.texts[before:]
    assert any(where == "log gateway.access" for where, _ in seen)
    assert any(where == "error body" for where, _ in seen)
    assert secret_witness.registries, "the witness sees every Metrics registry"


async def test_tokens_in_every_wrong_place_do_not_leak(
    make_gateway: GatewayFactory, idp: FakeIdP, secret_witness: Witness
) -> None:
    gateway = await make_gateway()
    before = len(secret_witness.texts)
    attempts = [
        request("/api/private", "Authorization: Bearer demo-reader-token", "Authorization: Bearer demo-reader-token"),
        request("/api/private?access_token=demo-reader-token", "Authorization: Bearer demo-reader-token"),
        request("/api/private?access_token=demo-reader-token"),
        request("/api/private", "Authorization: Bearer demo-reader-token$"),
        request("/api/private", "Authorization: Bearer demo-expired-token"),
        request("/api/private-scoped", "Authorization: Bearer demo-noroles-token"),
        request("/api/private", "Authorization: Basic demo-reader-token"),
        request("/api/private", "X-Auth-Subject: demo-reader-token", "Authorization: Bearer demo-reader-token"),
    ]
    for attempt in attempts:
        await send(gateway.port, attempt)
    idp.mode = "status:401"  # the IdP refuses our client credentials: logged loudly, but without the secret
    await send(gateway.port, request("/api/private", "Authorization: Bearer demo-reader-token"))
    leaked = Witness(secret_witness.watched)
    leaked.texts = secret_witness.texts[before:]
    leaked.registries = [gateway.app[METRICS].registry]
    assert leaked.texts and leaked.leaks() == []


SECRET_WORDS = ("secret", "token", "password", "authorization", "credential", "digest")


def _secret_name(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return any(word in name.lower() for word in SECRET_WORDS)


@pytest.mark.parametrize("package", ["gateway", "demo_backend"])
def test_secrets_are_never_compared_with_eq(package: str) -> None:
    """`a == secret` returns early at the first differing byte; hmac.compare_digest does not."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                if any(_secret_name(side) for side in (node.left, *node.comparators)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_idp_stand_in_checks_the_client_secret_in_constant_time() -> None:
    source = (ROOT / "demo_backend" / "idp.py").read_text(encoding="utf-8")
    assert "hmac.compare_digest" in source
    assert CLIENT_SECRET not in (ROOT / "config.yaml").read_text(encoding="utf-8")
