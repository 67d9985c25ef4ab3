#!/usr/bin/env python3
"""Per-request cost of weir and nginx as proxies, measured in one run.

Starts the load test's fixed-response nginx upstream, nginx as a one-worker
keep-alive proxy and weir with one thread (the same weighted route as
`run.py`'s `weir_weighted`), both pinned to CPU 1, wrk pinned to CPU 0.
Then, in alternating rounds (nginx, weir, nginx, weir, ...), drives each
with wrk (closed loop, 50 connections, GET /v1/models) and reads, for the
proxy's processes only:

- user and kernel CPU time (`/proc/PID/stat` utime/stime, children
  included) per request, in microseconds;
- system calls per request (`perf stat -e raw_syscalls:sys_enter -p PID`,
  over the same wrk window);
- voluntary and involuntary context switches per request
  (`/proc/PID/status`).

With `--allocs`, one more window per proxy counts weir's heap allocations
per request: uprobes on the entry points of its allocator (mimalloc's
`mi_malloc_aligned`, `mi_zalloc_aligned`, `mi_realloc_aligned`, which Rust's
global allocator calls; heaptrack sees none of them, mimalloc never calls
`malloc`). Uprobes slow every allocation, so that window's rate means
nothing and its counts are kept apart from the timing rounds.

Prints a Markdown table of medians (min–max) over the rounds and writes the
figures as JSON to `loadtest/results/budget.json`.

    loadtest/budget.py                      # 5 rounds of 5 s
    loadtest/budget.py --rounds 3 --seconds 3 --bin-dir target/release
    loadtest/budget.py --allocs             # ... and allocations per request

Needs perf (Debian's linux-perf; run as root or with perf_event_paranoid
<= 1 for the syscall count; without it the syscall column is empty).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the load test's own process setup)
from harness import Stack, free_port, log  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its direct children (nginx's worker)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu(pids: list[int]) -> tuple[float, float, int, int]:
    """User and kernel CPU seconds, voluntary and involuntary switches."""
    user = kernel = 0.0
    vol = invol = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / TICK
        kernel += int(fields[12]) / TICK
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol += int(line.split()[1])
        # Threads' switches are counted per task.
        for task in Path(f"/proc/{pid}/task").iterdir():
            if task.name == str(pid):
                continue
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol += int(line.split()[1])
    return user, kernel, vol, invol


def measure(name: str, url: str, pid: int, seconds: int, connections: int) -> dict:
    pids = family(pid)
    perf = None
    if shutil.which("perf"):
        perf = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
    before = cpu(pids)
    row = run.wrk(url, "plain.lua", seconds, connections)
    after = cpu(pids)
    syscalls = None
    if perf:
        perf.send_signal(2)
        _, err = perf.communicate(timeout=10)
        for line in err.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and "raw_syscalls:sys_enter" in parts[2] and parts[0].isdigit():
                syscalls = int(parts[0])
    n = row["requests"]
    return {
        "proxy": name,
        "rps": row["rps"],
        "requests": n,
        "errors": row.get("errors", 0),
        "user_us": (after[0] - before[0]) / n * 1e6,
        "kernel_us": (after[1] - before[1]) / n * 1e6,
        "syscalls": syscalls / n if syscalls is not None else None,
        "voluntary_switches": (after[2] - before[2]) / n,
        "involuntary_switches": (after[3] - before[3]) / n,
    }


ALLOCATORS = ("mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned")


def allocations(weir: Path, pid: int, url: str, seconds: int, connections: int) -> dict:
    """Allocations per request of the weighted GET and the filtered 1 KiB
    POST, counted by uprobes (added here, removed after)."""
    probes = [f"probe_weir:{f}" for f in ALLOCATORS]
    # Probes left by an earlier run (perhaps of another build) go first.
    subprocess.run(["perf", "probe", "-q", "-d", "probe_weir:*"], capture_output=True, check=False)
    for f in ALLOCATORS:
        subprocess.run(["perf", "probe", "-q", "-x", str(weir), f], check=True)
    try:
        out = {}
        for name, script, path in (("weighted_get", "plain.lua", ""), ("filtered_post_1k", "post_1k.lua", "/filtered")):
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(probes), "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # perf inserts the uprobes after it starts: give it time, or the
            # first part of the window goes uncounted (a benchmark pause).
            time.sleep(1)
            row = run.wrk(url, script, seconds, connections, path=path)
            perf.send_signal(2)
            _, err = perf.communicate(timeout=30)
            total = sum(int(line.split(",")[0]) for line in err.splitlines()
                        if line.split(",")[0].isdigit() and "probe_weir:" in line)
            out[name] = total / row["requests"]
            log(f"allocations: {name} {out[name]:.1f} per request ({row['requests']} requests)")
        return out
    finally:
        subprocess.run(["perf", "probe", "-q", "-d", "probe_weir:*"], capture_output=True, check=False)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--bin-dir", type=Path, help="take weir from here instead of building")
    ap.add_argument("--allocs", action="store_true", help="also count weir's allocations per request (uprobes)")
    args = ap.parse_args()
    run.ensure_tools(False)
    weir = (args.bin_dir / "weir" if args.bin_dir else run.build() / "weir").resolve()
    rows: list[dict] = []
    allocs: dict = {}
    with tempfile.TemporaryDirectory(prefix="weir-budget-") as tmp, Stack(Path(tmp)) as stack:
        ports = {k: free_port() for k in ("v1", "v2", "nginx", "sse")}
        ports["sse"] = f"127.0.0.1:{ports['sse']}"
        run.start_upstream(stack, ports)
        nginx_url = run.start_nginx_proxy(stack, ports)
        weir_url = run.start_weir(stack, weir, ports)
        nginx_pid = int((Path(tmp) / "nginx-proxy.pid").read_text())
        weir_pid = int(subprocess.run(["pgrep", "-n", "-f", f"{weir} --config"], capture_output=True,
                                      text=True, check=True).stdout.split()[0])
        for url in (nginx_url, weir_url):  # warm-up
            run.wrk(url, "plain.lua", 1, args.connections)
        for r in range(args.rounds):
            for name, url, pid in (("nginx", nginx_url, nginx_pid), ("weir", weir_url, weir_pid)):
                row = measure(name, url, pid, args.seconds, args.connections)
                log(f"round {r + 1} {name}: {row['rps']:.0f} rps, user {row['user_us']:.1f} µs, "
                    f"kernel {row['kernel_us']:.1f} µs, syscalls {row['syscalls']}")
                rows.append(row)
        if args.allocs:
            allocs = allocations(weir, weir_pid, weir_url, args.seconds, args.connections)
    print("| proxy | rps | user µs/req | kernel µs/req | syscalls/req | voluntary switches/req | involuntary/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("nginx", "weir"):
        mine = [r for r in rows if r["proxy"] == name]
        col = lambda k: spread([r[k] for r in mine]) if all(r[k] is not None for r in mine) else "–"  # noqa: E731
        print(f"| {name} | {statistics.median(r['rps'] for r in mine):.0f} | {col('user_us')} | "
              f"{col('kernel_us')} | {col('syscalls')} | {col('voluntary_switches')} | {col('involuntary_switches')} |")
    for name, per in allocs.items():
        print(f"\nweir allocations per request, {name}: {per:.1f}")
    out = Path(__file__).resolve().parent / "results" / "budget.json"
    out.write_text(json.dumps({"rounds": rows, "allocations": allocs, "seconds": args.seconds,
                               "connections": args.connections}, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
