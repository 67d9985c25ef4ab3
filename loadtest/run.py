#!/usr/bin/env python3
"""Weir load-test runner.

Builds the release binaries, starts a fixed-response nginx upstream, `weir`
and an nginx weighted proxy on free 127.0.0.1 ports, runs the scenarios with
wrk (closed loop) and oha (constant rate, when installed), stops everything
and writes a results table (Markdown + JSON) under loadtest/results/.

    loadtest/run.py            # full run: 15 s per scenario, enforce targets.toml
    loadtest/run.py --quick    # 2 s per scenario, checks the scripts work (CI)

The load generator is pinned to CPU 0 and the proxy under test to CPU 1
(`taskset`), the upstream floats. Exit status 1 when a target is missed (full
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
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_DIR = HERE / "wrk"
TOOLS = HERE / ".tools"


def log(msg: str) -> None:
    print(f"[loadtest] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools(want_oha: bool) -> str | None:
    missing = [p for p, cmd in (("wrk", "wrk"), ("nginx-light", "nginx"), ("etcd-server", "etcd"),
                                ("etcd-client", "etcdctl")) if not shutil.which(cmd)]
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
    return ROOT / "target" / "release" / "weir"


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > cpu else []


def wait_http(url: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {limit}s")
        time.sleep(0.05)


class Stack(contextlib.ExitStack):
    """Every process started here is stopped when the stack closes."""

    def __init__(self, tmp: Path):
        super().__init__()
        self.tmp = tmp

    def spawn(self, name: str, argv: list[str], env: dict | None = None, stdout=None) -> subprocess.Popen:
        logf = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(argv, stdout=stdout or logf, stderr=logf, env=env)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logf.close()

        self.callback(stop)
        return proc


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
    stack.spawn("upstream", ["nginx", "-c", str(conf), "-p", str(stack.tmp)])
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


def start_weir(stack: Stack, weir: Path, ports: dict, extra: tuple[str, ...] = (), name: str = "weir") -> str:
    cfg = stack.tmp / "weir.toml"
    words = stack.tmp / "words.txt"
    dictionary(words)
    cfg.write_text(f"""
[server]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 1
access_log = false
grace_period_seconds = 0

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

[[filters]]
name = "words"
words_file = "{words}"

[[routes]]
name = "filtered"
prefix = "/filtered"
arms = [{{ name = "v1", pool = "engine-v1", weight = 1 }}]
filters = {{ request = ["words"] }}
""")
    env = {**os.environ, "WEIR_LOG": "warn"}
    proc = stack.spawn(name, pin(1) + [str(weir), "--config", str(cfg), *extra], env=env, stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode() if proc.stdout else ""
    fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
    if "proxy" not in fields:
        raise RuntimeError(f"weir did not start: {line!r}; see {stack.tmp / f'{name}.log'}")
    wait_http(f"http://{fields['admin']}/readyz")
    return f"http://{fields['proxy']}"


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


def wrk(url: str, script: str, seconds: int, connections: int, path: str = "") -> dict:
    argv = pin(0) + ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                     "-s", str(WRK_DIR / script), url + "/v1/models"]
    env = {**os.environ, "WEIR_PATH": path} if path else None
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    row["rps"] = row["requests"] / (row["duration_us"] / 1e6)
    return row


def oha_fixed_rate(oha: str, url: str, seconds: int, rate: int) -> dict:
    argv = pin(0) + [oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate),
                     "-c", "50", "--latency-correction", url + "/v1/models"]
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
        "pinning": "load generator on CPU 0, proxy under test on CPU 1, upstream floating",
    }


def evaluate(results: dict, targets: dict, quick: bool) -> list[str]:
    t = targets["targets"]
    r = results["scenarios"]
    checks = []
    ratio = r["weir_weighted"]["rps"] / r["nginx_weighted"]["rps"]
    results["ratios"] = {"rps_weir_over_nginx": ratio}
    checks.append(("weir rps / nginx rps", ratio, ">=", t["rps_ratio_vs_nginx_min"]))
    added = r["weir_one_in_flight"]["p99"] - r["direct_one_in_flight"]["p99"]
    results["ratios"]["added_p99_one_in_flight_us"] = added
    checks.append(("added P99 at 1 in flight (us)", added, "<=", t["added_p99_one_in_flight_us_max"]))
    if "weir_filter_1k" in r:
        results["ratios"]["filter_1k_rps_over_unfiltered"] = r["weir_filter_1k"]["rps"] / max(r["weir_post_1k"]["rps"], 1)
        results["ratios"]["filter_1k_added_p50_one_in_flight_us"] = (
            r["weir_filter_1k_one_in_flight"]["p50"] - r["weir_post_1k_one_in_flight"]["p50"])
    if "weir_half_rate" in r:
        p99r = r["weir_half_rate"]["p99"] / max(r["nginx_half_rate"]["p99"], 1)
        results["ratios"]["p99_weir_over_nginx_half_rate"] = p99r
        checks.append(("weir P99 / nginx P99 at 50% rate", p99r, "<=", t["p99_ratio_at_half_rate_max"]))
    errors = sum(s.get("errors", 0) for s in r.values())
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
        f"# Load test results ({'quick' if results['quick'] else 'full'} run)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['date']}; {m['pinning']}.",
        f"Closed loop: wrk, 1 thread, {results['connections']} connections, {results['seconds']} s per scenario.",
        "", "| scenario | rps | P50 µs | P99 µs | P99.9 µs | errors |", "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in results["scenarios"].items():
        label = f"{name} ({s['flips']} flips)" if "flips" in s else name
        lines.append(f"| {label} | {s['rps']:.0f} | {s['p50']:.0f} | {s['p99']:.0f} | {s['p999']:.0f} | {s['errors']} |")
    lines += ["", "| target | value | goal | met |", "|---|---:|---|---|"]
    for t in results.get("targets", []):
        lines.append(f"| {t['target']} | {t['value']:.3f} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s per scenario; do not enforce speed targets")
    ap.add_argument("--seconds", type=int, help="seconds per scenario")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out", type=Path, help="results path without suffix")
    args = ap.parse_args()
    seconds = args.seconds or (2 if args.quick else 15)
    oha = ensure_tools(want_oha=not args.quick)
    weir = build()
    targets = tomllib.loads((HERE / "targets.toml").read_text())
    out = args.out or (HERE / "results" / ("tmp/quick" if args.quick else "latest"))
    ports = {"v1": free_port(), "v2": free_port(), "nginx": free_port()}
    results = {"quick": args.quick, "seconds": seconds, "connections": args.connections,
               "machine": machine(), "scenarios": {}}
    sc = results["scenarios"]
    with tempfile.TemporaryDirectory(prefix="weir-loadtest-") as tmp, Stack(Path(tmp)) as stack:
        start_upstream(stack, ports)
        direct = f"http://127.0.0.1:{ports['v1']}"
        weir_url = start_weir(stack, weir, ports)
        nginx_url = start_nginx_proxy(stack, ports)
        plan = [
            ("direct", direct, "plain.lua", args.connections),
            ("weir_weighted", weir_url, "plain.lua", args.connections),
            ("nginx_weighted", nginx_url, "plain.lua", args.connections),
            ("weir_ab_sticky", weir_url, "ab_sticky.lua", args.connections),
            ("direct_one_in_flight", direct, "plain.lua", 1),
            ("weir_one_in_flight", weir_url, "plain.lua", 1),
            ("nginx_one_in_flight", nginx_url, "plain.lua", 1),
            # Scenario 5: 1 KiB chat bodies, without and with the Wasm filter
            # (1k-word mixed dictionary).
            ("weir_post_1k", weir_url, "post_1k.lua", args.connections, "/v1/chat/completions"),
            ("weir_filter_1k", weir_url, "post_1k.lua", args.connections, "/filtered/v1/chat/completions"),
            ("weir_post_1k_one_in_flight", weir_url, "post_1k.lua", 1, "/v1/chat/completions"),
            ("weir_filter_1k_one_in_flight", weir_url, "post_1k.lua", 1, "/filtered/v1/chat/completions"),
        ]
        for name, url, script, conns, *path in plan:
            log(f"{name}: {seconds}s, {conns} connection(s)")
            sc[name] = wrk(url, script, seconds, conns, *path)
        # Scenario 7: the config from etcd, weights flipped every 100 ms under load.
        etcd_weir, etcd_ep = start_etcd_weir(stack, weir, ports)
        flipper = Flipper(etcd_ep)
        flipper.start()
        log(f"weir_etcd_flips: {seconds}s, {args.connections} connection(s), weights flipped every 100 ms")
        sc["weir_etcd_flips"] = wrk(etcd_weir, "plain.lua", seconds, args.connections)
        flipper.stop.set()
        flipper.join()
        sc["weir_etcd_flips"]["flips"] = flipper.flips
        sc["weir_etcd_flips"]["errors"] += flipper.failed
        if oha:
            rate = max(int(sc["nginx_weighted"]["rps"] * 0.5), 100)
            for name, url in (("nginx_half_rate", nginx_url), ("weir_half_rate", weir_url)):
                log(f"{name}: {rate} req/s for {seconds}s")
                sc[name] = oha_fixed_rate(oha, url, seconds, rate)
        else:
            log("oha not installed: skipping the constant-rate scenarios")
    missed = evaluate(results, targets, args.quick)
    write_results(results, out)
    print(out.with_suffix(".md").read_text())
    if missed:
        log("targets missed:\n  " + "\n  ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
