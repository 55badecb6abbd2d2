"""What the bench drives: processes on free ports, nginx with a config of its own, wrk and its output, RSS."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from demo_backend import demo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    demo.wait_for_port(port, [proc], timeout, who="bench")


def ensure_debian_packages(commands: dict[str, str]) -> None:
    """{command: Debian package}: apt-get install the packages whose command is missing."""
    missing = [package for command, package in commands.items() if not _which(command)]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"bench: installing {' '.join(missing)} with apt-get", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)


def _which(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def start_nginx(prefix: Path, port: int, backend: int, workers: int) -> subprocess.Popen[bytes]:
    """A plain reverse proxy in front of the backend: keep-alive to it, no logging, `workers` processes."""
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, workers=workers, prefix=prefix, backend=backend, port=port))
    nginx = _which("nginx") or "nginx"
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return proc


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not (rps and p50 and p99 and total):
        raise ValueError("cannot read wrk's output:\n" + output)
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk(url: str, *, seconds: int, connections: int, threads: int, headers: dict[str, str]) -> WrkResult:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


SPRAY_LUA = """\
-- Every request carries a token never seen before (per-thread prefix, counter); a thread stops after its share.
counter, limit, prefix = 0, {per_thread}, "spray"
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("prefix", "spray" .. threads .. "x")
end
function request()
    counter = counter + 1
    return wrk.format("GET", nil, {{["Authorization"] = "Bearer " .. prefix .. counter}})
end
function response(status, headers, body)
    if counter >= limit then wrk.thread:stop() end
end
"""


@dataclass(frozen=True, slots=True)
class SprayResult:
    calls: int  # introspection calls the IdP saw: one per distinct token that reached it
    seconds: float
    wrk: WrkResult


def spray(
    url: str, directory: Path, *, tokens: int, connections: int, threads: int, calls: Callable[[], int]
) -> SprayResult:
    """Send `tokens` distinct bogus tokens. wrk runs for its whole -d even when its threads stop, so it is
    interrupted (SIGINT: it still prints its numbers) once `calls()` (the IdP's count) stops moving; the rate is
    taken from the IdP's count and the time of its last change, not from wrk's duration."""
    script = directory / "spray.lua"
    script.write_text(SPRAY_LUA.format(per_thread=tokens // threads))
    args = ["wrk", f"-t{threads}", f"-c{connections}", "-d3600s", "--latency", "-s", str(script), url]
    start = last = calls()
    started = changed = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    while proc.poll() is None:
        time.sleep(0.25)
        now = calls()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed >= 3.0:
            proc.send_signal(signal.SIGINT)
            break
    out, _ = proc.communicate(timeout=60)
    return SprayResult(calls=last - start, seconds=changed - started, wrk=parse_wrk(out))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the gateway's workers), from /proc."""
    total = 0
    for one in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(m.group(1)) * 1024 if m else 0
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    gib = int(mem.group(1)) / 1024 / 1024 if mem else 0.0
    return f"{os.cpu_count()} CPUs ({cpu}), {gib:.1f} GiB RAM, Linux {os.uname().release}"
