#!/usr/bin/env python3
"""Time from a weights PUT on one gateway's admin API to both replicas
serving it, over N changes (real etcd, two real `weir` replicas).

    python3 loadtest/weights_apply.py [--bin-dir target/release] [--changes 100]

Each change is a PUT /admin/routes/chat/weights to replica A (alternating
v2 between 10 and 20 %); the clock stops when both replicas' /readyz name
the revision of the write. Prints P50/P90/P99/max in milliseconds. The
replicas poll nothing: etcd's watch delivers the change; /readyz is polled
every 0.2 ms here only to see when it has landed.
"""

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait(check, limit: float = 20.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            v = check()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.0002)
    raise TimeoutError("condition not met")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    bins = Path(args.bin_dir).resolve()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        try:
            client, peer = free_port(), free_port()
            ep, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            procs.append(subprocess.Popen(
                ["etcd", "--name", "wa", "--data-dir", str(t / "etcd"), "--listen-client-urls", ep,
                 "--advertise-client-urls", ep, "--listen-peer-urls", peer_url,
                 "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"wa={peer_url}",
                 "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait(lambda: urllib.request.urlopen(ep + "/health", timeout=1).status == 200)
            cfg = t / "config.toml"
            cfg.write_text("""
[[pools]]
name = "p1"
backends = [{ address = "127.0.0.1:9" }]
[[pools]]
name = "p2"
backends = [{ address = "127.0.0.1:10" }]
[[routes]]
name = "chat"
prefix = "/"
arms = [{ name = "v1", pool = "p1", weight = 90 }, { name = "v2", pool = "p2", weight = 10 }]
""")
            subprocess.run([str(bins / "weirctl"), "--etcd", ep, "config", "import", str(cfg)],
                           check=True, capture_output=True)
            server = t / "server.toml"
            server.write_text('[server]\nproxy = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
                              'threads = 1\naccess_log = false\ngrace_period_seconds = 0\n')
            admins = []
            for name in ("a", "b"):
                p = subprocess.Popen([str(bins / "weir"), "--config", str(server), "--etcd", ep],
                                     stdout=subprocess.PIPE, stderr=open(t / f"{name}.log", "w"),
                                     env={"WEIR_LOG": "warn", "PATH": "/usr/bin:/bin"})
                procs.append(p)
                line = p.stdout.readline().decode() if p.stdout else ""
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                admins.append(f"http://{fields['admin']}")
            for a in admins:
                wait(lambda a=a: http("GET", a + "/readyz").get("ready"))
            times = []
            for i in range(args.changes):
                v2 = 20 if i % 2 == 0 else 10
                start = time.perf_counter()
                done = http("PUT", admins[0] + "/admin/routes/chat/weights",
                            {"weights": {"v1": 100 - v2, "v2": v2}, "reason": f"apply timing {i}"})
                rev = done["revision"]
                for a in admins:
                    wait(lambda a=a: (http("GET", a + "/readyz").get("revision") or 0) >= rev)
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            q = statistics.quantiles(times, n=100)
            print(json.dumps({
                "changes": len(times),
                "p50_ms": round(q[49], 2), "p90_ms": round(q[89], 2),
                "p99_ms": round(q[98], 2), "max_ms": round(times[-1], 2),
            }))
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
