"""Identity for the upstream: `python -m bench.identity [--seconds S] [--rounds N] [--entries N]`.

1. Memory per cached token against the number of claims the IdP returns: principals built from answers with 10 to
   2,000 claims (ZITADEL-like `urn:zitadel:*` keys, metadata) and three mapped claims, put in the gateway's LRU;
   tracemalloc's growth divided by the entries. The principal keeps only the mapped claims, so the figure stays flat.
2. CPU per request (utime + stime from /proc over the requests wrk got answered, one worker, GET
   /api/private-scoped with a cached token): no mapping; two mapped headers; and the signed assertion on (ES256,
   reused while more than half of its 60 s lifetime is left). Plus the cost of one ES256 / EdDSA signature
   in-process, which is what every request would pay without the reuse.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import sys
import tempfile
import timeit
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.auth.cache import LocalCache
from gateway.auth.claims import ClaimSelection, Principal, principal_from_claims
from gateway.config.identity import AssertionSettings
from gateway.forward.assertion import Signer, signing_key
from gateway.forward.identity_map import HeaderMap

from .__main__ import PATH, TOKEN, backend_and_idp, gateway
from .cpu_per_request import measure

METADATA = "urn:zitadel:iam:user:metadata"
KEPT = ClaimSelection(
    (("email",), ("urn:zitadel:iam:user:resourceowner:id",), (METADATA, "department")), max_bytes=1024
)


def answer(claims: int, serial: int) -> dict[str, Any]:
    """An introspection answer with `claims` members in all, three of them mapped."""
    body: dict[str, Any] = {
        "active": True,
        "sub": f"user-{serial}",
        "client_id": "bench",
        "exp": 4_000_000_000,
        "email": f"user-{serial}@example.com",
        "urn:zitadel:iam:user:resourceowner:id": "170086305978381234",
        "urn:zitadel:iam:org:project:roles": {"read:messages": {"170086305978381234": "bench.example"}},
        METADATA: {"department": base64.b64encode(b"sales").decode()},
    }
    for i in range(claims - len(body)):
        body[f"urn:zitadel:iam:bench:claim:{i}"] = f"value-{serial}-{i}-" + "x" * 40
    return body


def bytes_per_entry(claims: int, entries: int) -> float:
    cache = LocalCache(entries)
    answers = [answer(claims, n) for n in range(entries)]  # built before the measurement: the IdP's, not ours
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n, body in enumerate(answers):
        cache.put(n.to_bytes(32, "big"), principal_from_claims(body, project_id=None, keep=KEPT), 1e9)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / entries


def sign_micros(private: Any) -> float:
    signer = Signer(AssertionSettings(issuer="bench"), (signing_key(private),))
    principal = Principal(subject="s", roles=frozenset({"read:messages"}), client_id="c", org_id="o")
    claims = signer.claims(principal, HeaderMap(), "default", "r", 0.0, 60.0)
    runs = 2000
    return 1e6 * timeit.timeit(lambda: signer.sign(claims), number=runs) / runs


def reuse_micros() -> float:
    """The hot path with the assertion on: the look-up of an assertion signed earlier for this principal."""
    signer = Signer(AssertionSettings(issuer="bench"), (signing_key(generate_private_key(SECP256R1())),))
    principal = Principal(subject="s", roles=frozenset({"read:messages"}), client_id="c", org_id="o")
    header_map = HeaderMap()
    signer.assertion(principal, header_map, "default", "r")
    runs = 200_000
    elapsed = timeit.timeit(lambda: signer.assertion(principal, header_map, "default", "r"), number=runs)
    return 1e6 * elapsed / runs


def cpu_rows(directory: Path, seconds: int, rounds: int) -> list[tuple[str, float, float]]:
    key = directory / "assertion.pem"
    key.write_bytes(generate_private_key(SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    headers = {"X-User-Name": "username", "X-User-Org": "urn:zitadel:iam:user:resourceowner:id"}
    variants: list[tuple[str, dict[str, Any]]] = [
        ("no mapping, no assertion", {}),
        ("2 mapped headers", {"identity": {"headers": headers}}),
        (
            "2 mapped headers + assertion (ES256, reused)",
            {"identity": {"headers": headers, "assertion": {"issuer": "bench", "key_files": [str(key)]}}},
        ),
    ]
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in variants}
    with backend_and_idp(directory) as (backend, idp):
        for _ in range(rounds):
            for label, extra in variants:
                with gateway(directory, idp, backend, 1, extra) as (port, pid):
                    runs[label].append(measure(f"http://127.0.0.1:{port}{PATH}", pid, seconds, TOKEN))
    rows = []
    for label, measured in runs.items():
        median = sorted(measured)[len(measured) // 2]
        rows.append((label, median[0], median[1]))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.identity")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args(argv)
    print("| claims in the IdP's answer | the answer as JSON, bytes | bytes per cached token |")
    print("|---|---|---|")
    for claims in (10, 100, 500, 2000):
        size = len(json.dumps(answer(claims, 0)))
        print(f"| {claims:,} | {size:,} | {bytes_per_entry(claims, args.entries):,.0f} |")
    print()
    print(f"one ES256 signature: {sign_micros(generate_private_key(SECP256R1())):.0f} µs in-process")
    print(f"one EdDSA signature: {sign_micros(Ed25519PrivateKey.generate()):.0f} µs in-process")
    print(f"one reused assertion (look-up): {reuse_micros():.2f} µs in-process")
    if args.memory_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="gateway-identity-") as tmp:
        rows = cpu_rows(Path(tmp), args.seconds, args.rounds)
    print()
    print("| variant | CPU µs/req (median) | req/s |")
    print("|---|---|---|")
    for label, micros, rate in rows:
        print(f"| {label} | {micros:.0f} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
