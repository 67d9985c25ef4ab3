#!/usr/bin/env python3
"""Weir load-test runner.

Builds the release binaries, starts a fixed-response nginx upstream, an SSE
upstream (weir-demo-upstream), `weir`, an nginx weighted proxy and
`weir-engine` on free 127.0.0.1 ports, runs the scenarios with wrk (closed
loop), oha (constant rate, when installed) and sse_load.py (streams, timed
per chunk), stops everything and writes a results table (Markdown + JSON)
under loadtest/results/. The real_* scenarios (real_models.py) measure
weir-engine on the pretrained models of .models/repo against plain
onnxruntime; they are skipped when scripts/setup-models.sh has not been run.

    loadtest/run.py            # full run: 15 s per scenario, enforce targets.toml
    loadtest/run.py --quick    # 2 s per scenario, checks the scripts work (CI)
    loadtest/run.py --only sse,engine --seconds 5   # some scenarios only
    loadtest/run.py --bin-dir target/release   # binaries built before: no cargo build

The load generator and the upstream are pinned to CPU 0 and the proxy under
test to CPU 1 (`taskset`). Exit status 1 when a target is missed (full
mode) or any scenario saw errors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import real_models
from harness import (HERE, ROOT, Stack, cpu_times, family, free_port, listening_fields, log, ort_lib, pin,
                     read_line, sse_load, wait_http, wrk)

TOOLS = HERE / ".tools"
MODELS = ROOT / "backend-engine" / "models" / "repo"

# SSE (scenario 6): the demo upstream streams SSE_TEXT as one chat chunk per
# character, each after a fixed 2 ms pause; measured at one stream in flight
# and at SSE_STREAMS streams.
SSE_TEXT = "abcdefghijklmnopqrstuvwxyz012345"
SSE_STREAMS = 16
SSE_BODY = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
# The engine (scenario 8): OIP tensor requests to `mlp` and streamed chat
# completions from `tiny-lm` (greedy, LM_TOKENS tokens) at each concurrency.
ENGINE_CONCURRENCY = (1, 4, 16)
LM_TOKENS = 32
LM_BODY = json.dumps({"model": "tiny-lm", "stream": True, "stream_options": {"include_usage": True},
                      "max_tokens": LM_TOKENS, "temperature": 0,
                      "messages": [{"role": "user", "content": "The Fox and the "}]})


def ensure_tools(want_oha: bool) -> str | None:
    missing = [p for p, cmd in (("wrk", "wrk"), ("nginx-light", "nginx"), ("etcd-server", "etcd"),
                                ("etcd-client", "etcdctl"), ("haproxy", "haproxy")) if not shutil.which(cmd)]
    if missing:
        log(f"installing {missing}")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    oha = shutil.which("oha") or (str(TOOLS / "bin" / "oha") if (TOOLS / "bin" / "oha").exists() else None)
    if oha is None and want_oha:
        log("installing oha (constant-rate load) with cargo install; takes a few minutes once")
        subprocess.run(["cargo", "install", "--locked", "oha", "--root", str(TOOLS)], check=True)
        oha = str(TOOLS / "bin" / "oha")
    return oha


def build() -> Path:
    log("building release binaries")
    # The workspace's feature set, so the binaries the test command built are reused.
    subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], cwd=ROOT, check=True)
    target = ROOT / (os.environ.get("CARGO_TARGET_DIR") or "target")  # an absolute one replaces ROOT
    return target / "release" / "weir"


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    conf = tmp / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    keepalive_requests 1000000;
{body}
}}
""")
    return conf


def start_upstream(stack: Stack, ports: dict) -> None:
    servers = "".join(
        f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ default_type application/json; return 200 '{{"model":"{arm}","ok":true}}'; }}
    }}"""
        for arm, port in (("v1", ports["v1"]), ("v2", ports["v2"]))
    )
    conf = nginx_conf(stack.tmp, "upstream", servers)
    # With the load generator: left to float, the scheduler put it on the
    # proxy's CPU for some proxies and not others (loadtest/README.md,
    # eighth measurement), so each proxy now has CPU 1 to itself.
    stack.spawn("upstream", pin(0) + ["nginx", "-c", str(conf), "-p", str(stack.tmp)])
    wait_http(f"http://127.0.0.1:{ports['v1']}/")
    wait_http(f"http://127.0.0.1:{ports['v2']}/")


def start_nginx_proxy(stack: Stack, ports: dict) -> str:
    body = f"""
    upstream backend {{
        server 127.0.0.1:{ports['v1']} weight=9;
        server 127.0.0.1:{ports['v2']} weight=1;
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{ports['nginx']} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = nginx_conf(stack.tmp, "nginx-proxy", body)
    stack.spawn("nginx-proxy", pin(1) + ["nginx", "-c", str(conf), "-p", str(stack.tmp)])
    url = f"http://127.0.0.1:{ports['nginx']}"
    wait_http(url + "/")
    return url


def start_haproxy(stack: Stack, ports: dict) -> str:
    """HAProxy (Debian's) as the second peer: one thread, the same weighted
    pair of upstreams, connections to them kept alive and shared."""
    cfg = stack.tmp / "haproxy.cfg"
    cfg.write_text(f"""
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend proxy
    bind 127.0.0.1:{ports['haproxy']}
    default_backend engines
backend engines
    balance roundrobin
    server v1 127.0.0.1:{ports['v1']} weight 9
    server v2 127.0.0.1:{ports['v2']} weight 1
""")
    stack.spawn("haproxy", pin(1) + ["haproxy", "-db", "-f", str(cfg)])
    url = f"http://127.0.0.1:{ports['haproxy']}"
    wait_http(url + "/")
    return url


def idle_clients_rss(url: str, pid: int, counts: tuple[int, ...]) -> dict:
    """VmRSS of `pid` (MiB) once `n` keep-alive clients have each been
    answered one request and stay connected, idle, for each n of `counts`
    (cumulative: the clients of the first count stay open for the next).
    `rss_N_clients_mib` is the settled figure (`settled_rss_mib`: what the
    clients hold once the burst that served them is over);
    `rss_N_clients_answered_mib` the figure read right after the last
    answer, with what the burst freed not yet given back."""
    import resource
    import socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(counts) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    socks: list = []
    out = {"rss_idle_mib": settled_rss_mib(pid)}
    try:
        for n in sorted(counts):
            fresh = []
            while len(socks) + len(fresh) < n:
                s = socket.create_connection((host, int(port)))
                s.sendall(request)
                fresh.append(s)
            for s in fresh:  # every answer read: each client was served
                got = b""
                while b"\r\n\r\n" not in got:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise RuntimeError("an idle client's connection closed before its answer")
                    got += chunk
            socks += fresh
            out[f"rss_{n}_clients_answered_mib"] = rss_mib(pid)
            out[f"rss_{n}_clients_mib"] = settled_rss_mib(pid)
    finally:
        for s in socks:
            s.close()
    return out


def settled_rss_mib(pid: int, quiet: float = 3.0, timeout: float = 15.0) -> float:
    """VmRSS of `pid` (MiB) once it has stopped falling: read every 0.5 s
    until it has not moved by 0.1 MiB for `quiet` seconds (or `timeout`
    passes). weir's allocator gives freed pages back one to two seconds
    after they were freed (mimalloc's 1 s purge delay, then weir's
    once-a-second collect), so right after a burst of 1,000 requests the
    figure still holds what the burst freed, and it can hold still for a
    second before it falls."""
    deadline = time.monotonic() + timeout
    last, since = rss_mib(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_mib(pid)
        if abs(now - last) >= 0.1:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dictionary(path: Path, n: int = 1000) -> None:
    """A fixed mixed dictionary of `n` English and Chinese words."""
    rng = random.Random(7)
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    lines = []
    for i in range(n):
        if i % 2:
            lines.append("".join(rng.choice(han) for _ in range(rng.randint(2, 4))))
        else:
            lines.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 10))))
    path.write_text("\n".join(lines) + "\n")


# The [server] table of every weir the runner starts: OS-chosen ports, one
# worker thread, no access log, no grace period.
SERVER_TOML = """
[server]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 1
access_log = false
grace_period_seconds = 0
"""


def weighted_route(ports: dict) -> str:
    """The weighted route `chat` (v1 90 %, v2 10 %) and its two pools: the
    part of the config every weir of the load test has."""
    return f"""
[[pools]]
name = "engine-v1"
backends = [{{ address = "127.0.0.1:{ports['v1']}" }}]

[[pools]]
name = "engine-v2"
backends = [{{ address = "127.0.0.1:{ports['v2']}" }}]

[[routes]]
name = "chat"
prefix = "/"
sticky_header = "x-user-id"
fallback = "v1"
arms = [
  {{ name = "v1", pool = "engine-v1", weight = 90 }},
  {{ name = "v2", pool = "engine-v2", weight = 10 }},
]
"""


def start_weir(stack: Stack, weir: Path, ports: dict, extra: tuple[str, ...] = (), name: str = "weir",
               env: dict | None = None) -> str:
    cfg = stack.tmp / "weir.toml"
    words = stack.tmp / "words.txt"
    dictionary(words)
    cfg.write_text(SERVER_TOML + weighted_route(ports) + f"""
[[pools]]
name = "sse"
backends = [{{ address = "{ports['sse']}" }}]

[[routes]]
name = "sse"
prefix = "/sse"
arms = [{{ name = "v1", pool = "sse", weight = 1 }}]

[[filters]]
name = "words"
words_file = "{words}"

[[routes]]
name = "filtered"
prefix = "/filtered"
arms = [{{ name = "v1", pool = "engine-v1", weight = 1 }}]
filters = {{ request = ["words"] }}
""")
    return launch_weir(stack, weir, name, cfg, extra, log="warn", env=env)


def launch_weir(stack: Stack, weir: Path, name: str, cfg: Path, extra: tuple[str, ...] = (),
                log: str = "warn", env: dict | None = None) -> str:
    """Starts `weir --config cfg` on the proxy's CPU (with `env` added to
    the environment), waits until it is ready and returns its proxy URL."""
    env = {**os.environ, **(env or {}), "WEIR_LOG": log}
    proc = stack.spawn(name, pin(1) + [str(weir), "--config", str(cfg), *extra], env=env, stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode() if proc.stdout else ""
    fields = listening_fields(line)
    if "proxy" not in fields:
        raise RuntimeError(f"{name} did not start: {line!r}; see {stack.tmp / f'{name}.log'}")
    wait_http(f"http://{fields['admin']}/readyz")
    return f"http://{fields['proxy']}"


def start_sse_upstream(stack: Stack, weir: Path) -> str:
    """weir-demo-upstream on an OS-chosen port; returns its address."""
    proc = stack.spawn("sse-upstream", [str(weir.parent / "weir-demo-upstream"), "--listen", "127.0.0.1:0",
                                        "--name", "sse"], stdout=subprocess.PIPE)
    # "weir-demo-upstream sse listening on 127.0.0.1:PORT"
    addr = read_line(proc, "weir-demo-upstream", stack.tmp / "sse-upstream.log").split()[-1]
    wait_http(f"http://{addr}/")
    return addr


def start_engine(stack: Stack, weir: Path) -> str:
    """weir-engine serving the shipped mlp and tiny-lm:1, pinned like the proxy
    under test; returns its HTTP URL."""
    env = {**os.environ, "ORT_DYLIB_PATH": ort_lib(), "RUST_LOG": "warn"}
    proc = stack.spawn("engine", pin(1) + [str(weir.parent / "weir-engine"), "--models", str(MODELS),
                                           "--model", "mlp", "--model", "tiny-lm:1",
                                           "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
                       env=env, stdout=subprocess.PIPE)
    # "weir-engine listening http=127.0.0.1:PORT grpc=127.0.0.1:PORT"
    line = read_line(proc, "weir-engine", stack.tmp / "engine.log")
    fields = listening_fields(line)
    url = f"http://{fields['http']}"
    wait_http(url + "/v2/health/ready")
    return url


def start_blackhole() -> int:
    """A backend that accepts connections and never answers (kept for the
    runner's lifetime); returns its port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    held = []

    def hold() -> None:
        while True:
            conn, _ = listener.accept()
            held.append(conn)

    threading.Thread(target=hold, daemon=True).start()
    return listener.getsockname()[1]


def start_pool_weir(stack: Stack, weir: Path, name: str, backends: list[str], balance: str) -> str:
    """A weir whose one route goes to one pool of `backends`."""
    cfg = stack.tmp / f"{name}.toml"
    listed = ", ".join(f'{{ address = "{b}" }}' for b in backends)
    cfg.write_text(SERVER_TOML + f"""
[[pools]]
name = "p"
balance = "{balance}"
backends = [{listed}]

[[routes]]
name = "chat"
arms = [{{ name = "v1", pool = "p", weight = 1 }}]
""")
    return launch_weir(stack, weir, name, cfg, log="error")


def start_etcd_weir(stack: Stack, weir: Path, ports: dict) -> tuple[str, str]:
    """A real etcd holding the weir config (imported with weirctl) and a
    second weir following it; returns (weir URL, etcd endpoint)."""
    client, peer = free_port(), free_port()
    ep, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    stack.spawn("etcd", ["etcd", "--name", "lt", "--data-dir", str(stack.tmp / "etcd"),
                         "--listen-client-urls", ep, "--advertise-client-urls", ep,
                         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                         "--initial-cluster", f"lt={peer_url}", "--log-level", "warn"])
    wait_http(ep + "/health")
    start_weir_cfg = stack.tmp / "weir.toml"  # written by start_weir, which runs first
    weirctl = weir.parent / "weirctl"
    subprocess.run([str(weirctl), "--etcd", ep, "config", "import", str(start_weir_cfg)],
                   check=True, capture_output=True)
    return start_weir(stack, weir, ports, ("--etcd", ep), name="weir-etcd"), ep


class Flipper(threading.Thread):
    """Flips route chat's weights in etcd every `every` seconds."""

    def __init__(self, endpoint: str, every: float = 0.1):
        super().__init__(daemon=True)
        self.endpoint, self.every, self.flips, self.failed = endpoint, every, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        env = {**os.environ, "ETCDCTL_API": "3"}
        while not self.stop.wait(self.every):
            w = '{"v1":90,"v2":10}' if self.flips % 2 else '{"v1":10,"v2":90}'
            r = subprocess.run(["etcdctl", "--endpoints", self.endpoint, "put", "/weir/routes/chat/weights", w],
                               capture_output=True, env=env)
            self.flips += 1
            self.failed += r.returncode != 0


# One-in-flight latency is a few tens of microseconds against a machine's
# stalls of milliseconds: those scenarios run interleaved, in ROUNDS short
# rounds of each, so a noisy spell hits all of them alike.
ROUNDS = 5


def merge_rounds(rounds: list[dict]) -> dict:
    """One scenario's figures from its rounds: totals summed, the maximum
    kept, each percentile and the mean the median over the rounds."""
    row = {"requests": sum(r["requests"] for r in rounds),
           "rps_rounds": [r["rps"] for r in rounds],
           "duration_us": sum(r["duration_us"] for r in rounds),
           "errors": sum(r["errors"] for r in rounds), "non2xx": sum(r["non2xx"] for r in rounds),
           "max": max(r["max"] for r in rounds), "rounds": len(rounds),
           "p99_worst_round": max(r["p99"] for r in rounds)}
    for key in ("p50", "p90", "p99", "p999", "mean"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["rps"] = row["requests"] / (row["duration_us"] / 1e6)
    if all("cpu_us" in r for r in rounds):
        row["cpu_us_rounds"] = [r["cpu_us"] for r in rounds]
        row["cpu_us"] = statistics.median(row["cpu_us_rounds"])
    return row


def oha_fixed_rate(oha: str, url: str, seconds: int, rate: int) -> dict:
    # -w: requests still in flight when the time is up are waited for, not
    # aborted (oha would count those as errors).
    argv = pin(0) + [oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate),
                     "-c", "50", "-w", "--latency-correction", url + "/v1/models"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    errors = sum(data.get("errorDistribution", {}).values()) + sum(
        n for code, n in codes.items() if not code.startswith("2"))
    return {
        "rps": data["summary"]["requestsPerSec"],
        "p50": pct["p50"] * 1e6, "p99": pct["p99"] * 1e6, "p999": pct.get("p99.9", pct["p99"]) * 1e6,
        "errors": errors, "rate": rate,
    }


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pinning": "load generator and upstream on CPU 0, proxy under test on CPU 1",
    }


def evaluate(results: dict, targets: dict, quick: bool) -> list[str]:
    t = targets["targets"]
    r = results["scenarios"]
    checks = []
    results["ratios"] = {}
    # The closed-loop peers ran in alternating rounds: each ratio is the
    # median of the rounds' ratios, with their spread.
    for peer in ("nginx", "haproxy"):
        if "weir_weighted" in r and f"{peer}_weighted" in r:
            ours, theirs = r["weir_weighted"], r[f"{peer}_weighted"]
            per_round = [a / b for a, b in zip(ours.get("rps_rounds", [ours["rps"]]),
                                               theirs.get("rps_rounds", [theirs["rps"]])) if b]
            ratio = statistics.median(per_round)
            results["ratios"][f"rps_weir_over_{peer}"] = ratio
            results["ratios"][f"rps_weir_over_{peer}_min"] = min(per_round)
            results["ratios"][f"rps_weir_over_{peer}_max"] = max(per_round)
            if peer == "nginx":
                checks.append(("weir rps / nginx rps (median of rounds)", ratio, ">=", t["rps_ratio_vs_nginx_min"]))
            # Requests per CPU second, weir over the peer, round by round:
            # the rate each would reach with the proxy's core to itself.
            if "cpu_us_rounds" in ours and "cpu_us_rounds" in theirs:
                per_round = [b / a for a, b in zip(ours["cpu_us_rounds"], theirs["cpu_us_rounds"]) if a]
                if per_round:
                    results["ratios"][f"per_cpu_weir_over_{peer}"] = statistics.median(per_round)
                    results["ratios"][f"per_cpu_weir_over_{peer}_min"] = min(per_round)
                    results["ratios"][f"per_cpu_weir_over_{peer}_max"] = max(per_round)
    if "weir_one_in_flight" in r and "direct_one_in_flight" in r:
        added = r["weir_one_in_flight"]["p99"] - r["direct_one_in_flight"]["p99"]
        results["ratios"]["added_p99_one_in_flight_us"] = added
        checks.append(("added P99 at 1 in flight (us)", added, "<=", t["added_p99_one_in_flight_us_max"]))
    if "weir_idle_clients" in r:
        rss = r["weir_idle_clients"]
        for n in IDLE_CLIENTS:
            if f"rss_{n}_clients_mib" in rss:
                results["ratios"][f"rss_{n}_idle_clients_mib"] = rss[f"rss_{n}_clients_mib"]
        if "rss_1000_clients_mib" in rss:
            checks.append(("weir RSS with 1000 idle clients (MiB)", rss["rss_1000_clients_mib"], "<=",
                           t["rss_1000_idle_clients_mib_max"]))
    # Scenario 6: what weir adds to an SSE stream (no targets: reported only).
    for suffix, direct, through in (("", "sse_direct_one_in_flight", "sse_weir_one_in_flight"),
                                    (f"_c{SSE_STREAMS}", "sse_direct", "sse_weir")):
        if direct in r and through in r:
            for figure in ("ttft_p50", "ttft_p99", "gap_p50", "gap_p99"):
                kind, p = figure.split("_")
                results["ratios"][f"sse_added_{kind}_{p}_us{suffix}"] = r[through][figure] - r[direct][figure]
    if "weir_filter_1k" in r and "weir_post_1k" in r:
        results["ratios"]["filter_1k_rps_over_unfiltered"] = r["weir_filter_1k"]["rps"] / max(r["weir_post_1k"]["rps"], 1)
    if "weir_filter_1k_one_in_flight" in r and "weir_post_1k_one_in_flight" in r:
        results["ratios"]["filter_1k_added_p50_one_in_flight_us"] = (
            r["weir_filter_1k_one_in_flight"]["p50"] - r["weir_post_1k_one_in_flight"]["p50"])
    # The same with 1 KiB chat bodies: unfiltered (reported) and through the
    # Wasm filter (target), both against the bodies sent straight upstream.
    if "direct_post_1k_one_in_flight" in r:
        floor = r["direct_post_1k_one_in_flight"]["p99"]
        if "weir_post_1k_one_in_flight" in r:
            results["ratios"]["post_1k_added_p99_one_in_flight_us"] = r["weir_post_1k_one_in_flight"]["p99"] - floor
        if "weir_filter_1k_one_in_flight" in r:
            added = r["weir_filter_1k_one_in_flight"]["p99"] - floor
            results["ratios"]["filter_1k_added_p99_one_in_flight_us"] = added
            checks.append(("added P99 at 1 in flight, Wasm filter (us)", added, "<=",
                           t["added_p99_one_in_flight_filter_us_max"]))
    # Scenario 9: a blackhole beside the healthy backend.
    if "weir_blackhole" in r and "weir_one_backend" in r:
        ratio = r["weir_blackhole"]["rps"] / max(r["weir_one_backend"]["rps"], 1)
        results["ratios"]["blackhole_rps_over_alone"] = ratio
        checks.append(("rps beside a blackhole / alone", ratio, ">=", t["blackhole_rps_ratio_min"]))
    if "weir_half_rate" in r and "nginx_half_rate" in r:
        p99r = r["weir_half_rate"]["p99"] / max(r["nginx_half_rate"]["p99"], 1)
        results["ratios"]["p99_weir_over_nginx_half_rate"] = p99r
        checks.append(("weir P99 / nginx P99 at 50% rate", p99r, "<=", t["p99_ratio_at_half_rate_max"]))
    # Each at half of its own max rate (reported): the latency at a load each
    # proxy can carry, whatever their difference in capacity.
    if "weir_half_own_rate" in r and "nginx_half_rate" in r:
        results["ratios"]["p99_weir_over_nginx_half_own_rate"] = (
            r["weir_half_own_rate"]["p99"] / max(r["nginx_half_rate"]["p99"], 1))
    # Scenario 10: the real models against plain onnxruntime.
    real_ratios, real_checks = real_models.evaluate(r, t)
    results["ratios"] |= real_ratios
    checks += real_checks
    # The requests the blackhole swallowed before the balancer learnt are
    # timeouts by design; that scenario's errors are reported, not counted.
    errors = sum(s.get("errors", 0) for n, s in r.items() if n != "weir_blackhole")
    checks.append(("errors (all scenarios)", errors, "<=", t["errors_max"]))
    missed = []
    results["targets"] = []
    for name, value, op, goal in checks:
        ok = value >= goal if op == ">=" else value <= goal
        results["targets"].append({"target": name, "value": value, "goal": f"{op} {goal}", "met": ok})
        if not ok and (not quick or name.startswith("errors")):
            missed.append(f"{name}: {value:.3f} (goal {op} {goal})")
    return missed


def write_results(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        f"# Load test results ({'quick' if results['quick'] else 'full'} run"
        + (f", only {results['only']})" if results.get("only") else ")"), "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['date']}; {m['pinning']}.",
        f"Closed loop: wrk, 1 thread, {results['connections']} connections, {results['seconds']} s per scenario.",
        "", "| scenario | rps | P50 µs | P99 µs | P99.9 µs | errors |", "|---|---:|---:|---:|---:|---:|",
    ]
    streams = {n: s for n, s in results["scenarios"].items() if "ttft_p50" in s and s.get("kind") != "real"}
    for name, s in results["scenarios"].items():
        if name in streams or s.get("kind") in ("real", "memory"):
            continue
        label = f"{name} ({s['flips']} flips)" if "flips" in s else name
        lines.append(f"| {label} | {s['rps']:.0f} | {s['p50']:.0f} | {s['p99']:.0f} | {s['p999']:.0f} | {s['errors']} |")
    if streams:
        lines += ["", "Streams (sse_load.py, closed loop; TTFT = request sent to first text chunk, gap = between "
                  "text chunks, stream = request sent to `[DONE]`; µs):", "",
                  "| scenario | streams | streams/s | TTFT P50 | TTFT P99 | gap P50 | gap P99 | stream P50 "
                  "| stream P99 | tokens/s | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in streams.items():
            lines.append(f"| {name} ({s['connections']} in flight) | {s['streams']} | {s['rps']:.1f} "
                         f"| {s['ttft_p50']:.0f} | {s['ttft_p99']:.0f} | {s['gap_p50']:.0f} | {s['gap_p99']:.0f} "
                         f"| {s['p50']:.0f} | {s['p99']:.0f} | {s['tokens_per_s']:.0f} | {s['errors']} |")
    memory = {n: s for n, s in results["scenarios"].items() if s.get("kind") == "memory"}
    for name, s in memory.items():
        lines += ["", f"{name}: VmRSS of weir (MiB), idle and with N idle keep-alive clients each answered once"
                  " (settled: once it stops falling; and right after the last answer):", "",
                  "| clients | RSS MiB, settled | right after the last answer |", "|---:|---:|---:|",
                  f"| 0 | {s['rss_idle_mib']:.1f} | |"]
        lines += [f"| {k.split('_')[1]} | {v:.1f} | {s.get(k.replace('_clients_mib', '_clients_answered_mib'), 0):.1f} |"
                  for k, v in s.items() if k.startswith("rss_") and k.endswith("_clients_mib")]
    lines += real_models.table(results["scenarios"])
    skipped = results.get("skipped", {})
    for why in dict.fromkeys(skipped.values()):
        lines += ["", f"Skipped {', '.join(f'`{n}`' for n, w in skipped.items() if w == why)}: {why}."]
    if results.get("ratios"):
        lines += ["", "| ratio | value |", "|---|---:|"]
        for name, value in results["ratios"].items():
            lines.append(f"| `{name}` | {value:.3f} |")
    lines += ["", "| target | value | goal | met |", "|---|---:|---|---|"]
    for t in results.get("targets", []):
        lines.append(f"| {t['target']} | {t['value']:.3f} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def wrk_plan(connections: int) -> list[tuple]:
    """(name, server, wrk script, connections, path) of the wrk scenarios."""
    return [
        ("direct", "direct", "plain.lua", connections),
        ("weir_weighted", "weir", "plain.lua", connections),
        ("nginx_weighted", "nginx", "plain.lua", connections),
        ("haproxy_weighted", "haproxy", "plain.lua", connections),
        ("weir_ab_sticky", "weir", "ab_sticky.lua", connections),
        ("direct_one_in_flight", "direct", "plain.lua", 1),
        ("weir_one_in_flight", "weir", "plain.lua", 1),
        ("nginx_one_in_flight", "nginx", "plain.lua", 1),
        ("haproxy_one_in_flight", "haproxy", "plain.lua", 1),
        # Scenario 5: 1 KiB chat bodies, without and with the Wasm filter
        # (1k-word mixed dictionary).
        ("weir_post_1k", "weir", "post_1k.lua", connections, "/v1/chat/completions"),
        ("weir_filter_1k", "weir", "post_1k.lua", connections, "/filtered/v1/chat/completions"),
        ("direct_post_1k_one_in_flight", "direct", "post_1k.lua", 1, "/v1/chat/completions"),
        ("weir_post_1k_one_in_flight", "weir", "post_1k.lua", 1, "/v1/chat/completions"),
        ("weir_filter_1k_one_in_flight", "weir", "post_1k.lua", 1, "/filtered/v1/chat/completions"),
    ]


# The closed-loop scenarios run in alternating rounds: weir and its peers,
# PEER_ROUNDS of them (a multiple of the three places in a round, so each
# peer runs first, second and last equally often; a stall of the host
# that hits up to four of the nine rounds cannot carry the median of their
# ratios outside the range of the rounds it missed).
PEERS = ("weir_weighted", "nginx_weighted", "haproxy_weighted")
PEER_ROUNDS = 9
# The process each peer runs as (its workers are its children).
PEER_PROCS = {"weir": "weir", "nginx": "nginx-proxy", "haproxy": "haproxy"}
# Idle keep-alive clients whose memory weir_idle_clients measures.
IDLE_CLIENTS = (1000, 10000)

# Scenario 6: (name, server, streams in flight).
SSE_PLAN = [("sse_direct", "direct", SSE_STREAMS), ("sse_weir", "weir", SSE_STREAMS),
            ("sse_direct_one_in_flight", "direct", 1), ("sse_weir_one_in_flight", "weir", 1)]
# Constant rate: (name, server, the closed-loop scenario whose max rate it halves).
HALF_RATE_PLAN = [("nginx_half_rate", "nginx", "nginx_weighted"), ("weir_half_rate", "weir", "nginx_weighted"),
                  ("weir_half_own_rate", "weir", "weir_weighted")]
# Scenario 8: (name, kind, concurrency).
ENGINE_PLAN = [(f"engine_infer_c{c}", "infer", c) for c in ENGINE_CONCURRENCY] + [
    (f"engine_stream_c{c}", "stream", c) for c in ENGINE_CONCURRENCY]


# Scenario 9: (name, backends): the healthy upstream alone, and beside a
# backend that accepts connections and never answers.
BLACKHOLE_PLAN = [("weir_one_backend", False), ("weir_blackhole", True)]


def scenario_names() -> list[str]:
    return ([p[0] for p in wrk_plan(1)] + ["weir_etcd_flips", "weir_idle_clients"] + [p[0] for p in BLACKHOLE_PLAN]
            + [p[0] for p in SSE_PLAN]
            + [p[0] for p in ENGINE_PLAN] + [p[0] for p in HALF_RATE_PLAN] + real_models.NAMES)


def select(only: str | None) -> set[str]:
    """The scenarios to run: all, or those `--only` names (a NAME selects the
    scenario of that name and every scenario whose name starts with NAME_)."""
    names = scenario_names()
    if not only:
        return set(names)
    chosen = set()
    for word in filter(None, (w.strip() for w in only.split(","))):
        hit = {n for n in names if n == word or n.startswith(word + "_")}
        if not hit:
            raise SystemExit(f"--only: no scenario {word!r}; the scenarios: {', '.join(names)}")
        chosen |= hit
    # A constant-rate scenario needs the scenario whose max rate it halves.
    chosen |= {of for name, _, of in HALF_RATE_PLAN if name in chosen}
    # real_streams16's ratio is over real_one_stream's figure.
    chosen |= {of for name, of in real_models.NEEDS.items() if name in chosen}
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s per scenario; do not enforce speed targets")
    ap.add_argument("--seconds", type=int, help="seconds per scenario")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help="run only these scenarios; NAME also selects every scenario named NAME_* "
                         "(e.g. sse, engine, engine_stream, weir_post_1k, real)")
    ap.add_argument("--out", type=Path, help="results path without suffix")
    ap.add_argument("--weir-binary", type=Path, metavar="PATH",
                    help="the weir binary under test (default: the one just built), e.g. an "
                         "older build for a before/after comparison")
    ap.add_argument("--bin-dir", type=Path, metavar="DIR",
                    help="take weir, weir-engine, weirctl and weir-demo-upstream from DIR instead of "
                         "building them (e.g. target/release of another checkout)")
    args = ap.parse_args()
    seconds = args.seconds or (2 if args.quick else 15)
    chosen = select(args.only)
    oha = ensure_tools(want_oha=not args.quick and any(p[0] in chosen for p in HALF_RATE_PLAN))
    weir = args.bin_dir.resolve() / "weir" if args.bin_dir else build()
    targets = tomllib.loads((HERE / "targets.toml").read_text())
    # Only a full run of every scenario is the committed record.
    default = "tmp/quick" if args.quick else ("tmp/only" if args.only else "latest")
    out = args.out or (HERE / "results" / default)
    ports = {"v1": free_port(), "v2": free_port(), "nginx": free_port(), "haproxy": free_port()}
    results = {"quick": args.quick, "seconds": seconds, "connections": args.connections,
               "machine": machine(), "scenarios": {}}
    if args.only:
        results["only"] = args.only
    sc = results["scenarios"]
    with tempfile.TemporaryDirectory(prefix="weir-loadtest-") as tmp, Stack(Path(tmp)) as stack:
        start_upstream(stack, ports)
        ports["sse"] = start_sse_upstream(stack, weir)
        servers = {"direct": f"http://127.0.0.1:{ports['v1']}"}
        servers["weir"] = start_weir(stack, args.weir_binary or weir, ports)
        servers["nginx"] = start_nginx_proxy(stack, ports)
        servers["haproxy"] = start_haproxy(stack, ports)
        plan = [p for p in wrk_plan(args.connections) if p[0] in chosen]
        # The peers (weir, nginx, HAProxy on the weighted route) in
        # alternating rounds, so their ratios compare the same minutes.
        peers = [p for p in plan if p[0] in PEERS]
        slice_s = max(1, round(seconds / PEER_ROUNDS))
        if peers:
            log(f"{', '.join(p[0] for p in peers)}: {args.connections} connection(s), "
                f"{PEER_ROUNDS} alternating rounds of {slice_s}s, the order rotating")
        for name, server, script, conns, *path in peers:  # warm-up, not counted
            wrk(servers[server], script, 1, conns, *path)
        peer_rounds = {p[0]: [] for p in peers}
        for r in range(PEER_ROUNDS if peers else 0):
            # Whichever proxy runs right after another on the shared CPU
            # was measured slower (`budget.py`): the order rotates, so
            # each peer takes each place as often.
            shift = r % len(peers)
            for name, server, script, conns, *path in peers[shift:] + peers[:shift]:
                # The proxy's CPU time in the round, per request: what
                # the host's spells move least (a stall slows the round's
                # rate, not the work each request takes).
                pids = family(stack.procs[PEER_PROCS[server]].pid)
                before = sum(cpu_times(pids))
                row = wrk(servers[server], script, slice_s, conns, *path)
                if row["requests"]:
                    row["cpu_us"] = (sum(cpu_times(pids)) - before) / row["requests"] * 1e6
                peer_rounds[name].append(row)
        for name, rows in peer_rounds.items():
            sc[name] = merge_rounds(rows)
        for name, server, script, conns, *path in plan:
            if conns > 1 and name not in PEERS:
                log(f"{name}: {seconds}s, {conns} connection(s)")
                sc[name] = wrk(servers[server], script, seconds, conns, *path)
        single = [p for p in plan if p[3] == 1]
        rounds = {p[0]: [] for p in single}
        if single:
            log(f"{', '.join(rounds)}: 1 connection, {ROUNDS} interleaved rounds of {slice_s}s")
        for _ in range(ROUNDS):
            for name, server, script, conns, *path in single:
                rounds[name].append(wrk(servers[server], script, slice_s, conns, *path))
        for name, rows in rounds.items():
            sc[name] = merge_rounds(rows)
        # Memory: weir's RSS with 1k and 10k idle keep-alive clients.
        if "weir_idle_clients" in chosen:
            # The weir this run started (`taskset` execs it: the same pid),
            # not the newest process of that name on the machine.
            pid = stack.procs["weir"].pid
            log(f"weir_idle_clients: RSS with {', '.join(map(str, IDLE_CLIENTS))} idle keep-alive clients")
            sc["weir_idle_clients"] = {"kind": "memory", "errors": 0,
                                       **idle_clients_rss(servers["weir"], pid, IDLE_CLIENTS)}
        # Scenario 7: the config from etcd, weights flipped every 100 ms under load.
        if "weir_etcd_flips" in chosen:
            etcd_weir, etcd_ep = start_etcd_weir(stack, weir, ports)
            flipper = Flipper(etcd_ep)
            flipper.start()
            log(f"weir_etcd_flips: {seconds}s, {args.connections} connection(s), weights flipped every 100 ms")
            sc["weir_etcd_flips"] = wrk(etcd_weir, "plain.lua", seconds, args.connections)
            flipper.stop.set()
            flipper.join()
            sc["weir_etcd_flips"]["flips"] = flipper.flips
            sc["weir_etcd_flips"]["errors"] += flipper.failed
        # Scenario 9: least request keeps a blackhole from soaking up the
        # connections; alone and beside it, interleaved rounds.
        blackhole = [p for p in BLACKHOLE_PLAN if p[0] in chosen]
        if blackhole:
            hole = start_blackhole()
            urls = {name: start_pool_weir(stack, args.weir_binary or weir, name,
                                          [f"127.0.0.1:{ports['v1']}"] + ([f"127.0.0.1:{hole}"] if with_hole else []),
                                          "least_request")
                    for name, with_hole in blackhole}
            slice_s = max(1, round(seconds / ROUNDS))
            log(f"{', '.join(urls)}: {args.connections} connection(s), {ROUNDS} interleaved rounds of {slice_s}s")
            rows = {name: [] for name in urls}
            for _ in range(ROUNDS):
                for name, url in urls.items():
                    rows[name].append(wrk(url, "plain.lua", slice_s, args.connections))
            for name, got in rows.items():
                sc[name] = merge_rounds(got)
        half_rate = [p for p in HALF_RATE_PLAN if p[0] in chosen]
        if half_rate and not oha:
            log("oha not installed: skipping the constant-rate scenarios")
        for name, server, of in half_rate if oha else []:
            rate = max(int(sc[of]["rps"] * 0.5), 100)
            log(f"{name}: {rate} req/s for {seconds}s")
            sc[name] = oha_fixed_rate(oha, servers[server], seconds, rate)
        # Scenario 6: SSE streams of len(SSE_TEXT) chunks 2 ms apart, straight
        # from the demo upstream and through weir (route /sse).
        sse_urls = {"direct": f"http://{ports['sse']}/v1/chat/completions",
                    "weir": f"{servers['weir']}/sse/v1/chat/completions"}
        for name, server, streams in SSE_PLAN:
            if name in chosen:
                log(f"{name}: {seconds}s, {streams} stream(s) of {len(SSE_TEXT)} chunks")
                sc[name] = sse_load(sse_urls[server], seconds, streams, SSE_BODY,
                                    (f"x-test-sse: {SSE_TEXT}",), expect_chunks=len(SSE_TEXT))
        # Scenario 8: weir-engine itself, OIP tensor infer and streamed chat.
        if any(name in chosen for name, *_ in ENGINE_PLAN):
            engine = start_engine(stack, weir)
            for name, kind, conns in ENGINE_PLAN:
                if name not in chosen:
                    continue
                if kind == "infer":
                    log(f"{name}: {seconds}s, {conns} connection(s), POST /v2/models/mlp/infer")
                    sc[name] = wrk(engine, "infer.lua", seconds, conns, "/v2/models/mlp/infer")
                else:
                    log(f"{name}: {seconds}s, {conns} stream(s) of {LM_TOKENS} tokens from tiny-lm")
                    sc[name] = sse_load(engine + "/v1/chat/completions", seconds, conns, LM_BODY)
        # Scenario 10: weir-engine on the real models of .models/repo against
        # plain onnxruntime (real_models.py); skipped without those models.
        real = {name for name in real_models.NAMES if name in chosen}
        why = real_models.unavailable() if real else None
        if why:
            log(f"{', '.join(sorted(real))}: skipped: {why}")
            results["skipped"] = {name: why for name in sorted(real)}
        elif real:
            sc.update(real_models.run(stack, weir, real, seconds, args.quick))
    missed = evaluate(results, targets, args.quick)
    write_results(results, out)
    print(out.with_suffix(".md").read_text())
    if missed:
        log("targets missed:\n  " + "\n  ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
