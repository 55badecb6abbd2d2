"""JWT access tokens: `python -m bench.jwt_tokens [--seconds S] [--rounds N] [--write]`.

One gateway worker on GET /api/private-scoped, with: an opaque token, cached (introspection mode, and `auto`); a
JWT on repeat (the same token: verified once, then cached); a JWT on first use (every request a token never seen
before, RS256 as ZITADEL signs, pre-signed by the bench). For each: req/s, the gateway's CPU per request (utime +
stime from /proc over the requests answered) and the calls at the IdP (introspections, key-set fetches).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .__main__ import PATH, TOKEN, gateway, process
from .cpu_per_request import cpu_seconds
from .tools import WrkResult, free_port, parse_wrk, wrk

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "bench-project"
KID = "bench-key-1"
ROLES = {"urn:zitadel:iam:org:project:roles": {"read:messages": {"1": "bench.example"}}}
CONNECTIONS, THREADS = 64, 2

TOKENS_LUA = """\
-- Every request takes the next token of the file, each thread its own share: no token is sent twice.
local tokens = {{}}
for line in io.lines("{path}") do tokens[#tokens + 1] = line end
local threads, counter, id = {threads}, 0, 0
local next_id = 0
function setup(thread)
    next_id = next_id + 1
    thread:set("id", next_id)
end
function request()
    counter = counter + 1
    local index = (counter - 1) * threads + id
    return wrk.format("GET", nil, {{["Authorization"] = "Bearer " .. tokens[(index - 1) % #tokens + 1]}})
end
"""


@dataclass
class Measured:
    label: str
    wrk: WrkResult
    cpu_us: float
    introspections: int
    key_fetches: int


def counts(idp: int) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{idp}/_count", timeout=10) as resp:
        document = json.load(resp)
    return int(document["introspections"]), int(document["key_fetches"])


def sign(key: rsa.RSAPrivateKey, issuer: str, n: int) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "sub": f"user-{n}", "aud": [PROJECT], "iat": now, "nbf": now, "exp": now + 7200, **ROLES}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def measure(
    label: str, port: int, pid: int, idp: int, seconds: int, headers: dict[str, str], script: Path | None = None
) -> Measured:
    """One wrk run: with `headers` (the same token every request), or with `script` (a new token each)."""
    url = f"http://127.0.0.1:{port}{PATH}"
    before_calls = counts(idp)
    before_cpu = cpu_seconds(pid)
    if script is None:
        result = wrk(url, seconds=seconds, connections=CONNECTIONS, threads=THREADS, headers=headers)
    else:
        cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url]
        result = parse_wrk(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    cpu = cpu_seconds(pid) - before_cpu
    after_calls = counts(idp)
    answered = max(1, result.requests)
    return Measured(
        label,
        result,
        cpu / answered * 1e6,
        after_calls[0] - before_calls[0],
        after_calls[1] - before_calls[1],
    )


def run(args: argparse.Namespace) -> list[Measured]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    results: dict[str, list[Measured]] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-jwt-bench-") as tmp:
        directory = Path(tmp)
        backend, idp = free_port(), free_port()
        issuer = f"http://127.0.0.1:{idp}"
        jwks = directory / "jwks.json"
        public = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(key.public_key()))
        jwks.write_text(json.dumps({"keys": [{**public, "kid": KID, "alg": "RS256", "use": "sig"}]}))
        print(f"bench: signing {args.tokens:,} JWTs ...", flush=True)
        first_use = directory / "tokens.txt"
        first_use.write_text("\n".join(sign(key, issuer, n) for n in range(args.tokens)) + "\n")
        script = directory / "first-use.lua"
        script.write_text(TOKENS_LUA.format(path=first_use, threads=THREADS))
        repeat = {"Authorization": f"Bearer {sign(key, issuer, -1)}"}
        logs = directory / "servers.log"
        py = sys.executable
        idp_cmd = [py, "-m", "bench.idp", "--port", str(idp), "--jwks", str(jwks)]
        with (
            process([py, "-m", "demo_backend", "--port", str(backend)], backend, logs),
            process(idp_cmd, idp, logs),
        ):
            for _ in range(args.rounds):
                for mode in ("introspect", "auto", "jwt"):
                    settings: dict[str, Any] = {"issuer": issuer, "timeout_seconds": 5, "access_tokens": mode}
                    if mode != "introspect":
                        settings |= {"project_id": PROJECT, "jwks_uri": issuer + "/oauth/v2/keys"}
                    # An admin port of its own: another gateway on this machine may hold the default one.
                    extra = {"idp": settings, "admin": {"host": "127.0.0.1", "port": free_port()}}
                    with gateway(directory, idp, backend, 1, extra) as (port, pid):
                        url = f"http://127.0.0.1:{port}{PATH}"
                        measured: list[Measured] = []
                        if mode in ("introspect", "auto"):
                            wrk(url, seconds=1, connections=CONNECTIONS, threads=THREADS, headers=TOKEN)  # cached
                            label = f"opaque token, cached ({mode})"
                            measured.append(measure(label, port, pid, idp, args.seconds, TOKEN))
                        else:
                            measured.append(measure("JWT, first use", port, pid, idp, args.seconds, {}, script))
                            measured.append(measure("JWT, repeat (cached)", port, pid, idp, args.seconds, repeat))
                        for m in measured:
                            results.setdefault(m.label, []).append(m)
    return [sorted(r, key=lambda m: m.cpu_us)[len(r) // 2] for r in results.values()]


def report(rows: list[Measured], args: argparse.Namespace) -> str:
    lines = [
        (
            f"wrk -t{THREADS} -c{CONNECTIONS} -d{args.seconds}s on GET {PATH}, 1 gateway worker, {args.rounds} "
            "round(s), each row its median round by CPU per request. IdP calls are counted at the IdP during the "
            f"measured run. First use: {args.tokens:,} distinct pre-signed RS256 tokens (2048-bit key), each sent once."
        ),
        "",
        "| token | req/s | CPU µs/req | p50 ms | p99 ms | non-2xx | introspections | key fetches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(
            f"| {m.label:<30} | {m.wrk.requests_per_second:>7,.0f} | {m.cpu_us:>10.0f} | {m.wrk.p50_ms:>6.2f} | "
            f"{m.wrk.p99_ms:>6.2f} | {m.wrk.non_2xx:>7} | {m.introspections:>14} | {m.key_fetches:>11} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jwt_tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20_000, help="distinct JWTs for the first-use run")
    parser.add_argument("--write", action="store_true", help="record this run in docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = run(args)
    text = report(rows, args)
    print(text)
    first = next(m for m in rows if m.label == "JWT, first use")
    if first.wrk.requests > args.tokens:
        print(f"warning: {first.wrk.requests:,} requests for {args.tokens:,} tokens: some were repeats; raise --tokens")
    if args.write:
        command = "python -m bench.jwt_tokens " + shlex.join(argv if argv is not None else sys.argv[1:])
        doc = ROOT / "docs" / "benchmarks.md"
        section = f"\n## JWT access tokens (issue 15)\n\n`{command.strip()}`\n\n{text}\n"
        doc.write_text(doc.read_text(encoding="utf-8").rstrip("\n") + "\n" + section, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
