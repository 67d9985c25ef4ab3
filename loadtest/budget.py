#!/usr/bin/env python3
"""Per-request cost of weir and nginx as proxies, measured in one run.

Starts the load test's fixed-response nginx upstream, nginx as a one-worker
keep-alive proxy and weir with one thread (the same weighted route as
`run.py`'s `weir_weighted`), both pinned to CPU 1, wrk pinned to CPU 0.
Then, in alternating rounds (nginx, weir, then weir, nginx, ...: the
order rotates each round), drives each with wrk (closed loop, 50
connections, GET /v1/models) and reads, for the proxy's processes only:

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
    loadtest/budget.py --compare /tmp/weir-before   # a second weir build, same rounds
    loadtest/budget.py --record weir.perf   # ... and a perf profile of weir
    loadtest/budget.py --sandbox-off        # ... and the same weir with --sandbox off
    loadtest/budget.py --thp-on             # ... and the same weir with transparent huge pages

`--compare PATH` starts a second weir (another build, same config) beside
the first and adds it to every round (nginx, weir, weir-b, ...), so a
change to the gateway or to Pingora is measured against the build before
it on the same machine in the same minutes. `--record FILE` records a
`perf record --call-graph dwarf` profile of the first weir for one more
window, and one of nginx's worker in `FILE.nginx` (`perf report -i FILE
--children` to read them).

`--floors` adds two measuring sticks to every round, built from
`gateway/examples/` (`cargo build --release -p weir-gateway --examples`;
taken from `BIN_DIR/examples/`): `floor-pingora`, Pingora's HTTP/1 proxy
with no hooks (what the framework costs before weir does anything), and
`floor-tokio`, a bare keep-alive proxy on Tokio and httparse (what the
runtime and the kernel cost), and `floor-tokio-maps`, the same with both
heads turned into the `pingora_http` header maps weir's hooks work on
(the floor of an engine that keeps those types). All use weir's
allocator and one thread.

`--pingora` adds the same weir binary with `WEIR_HTTP1_ENGINE=pingora`
(`weir-pingora`: every HTTP/1.x request through Pingora's proxy instead of
the gateway's direct path, `[server] http1_engine`) to every round. For
its instruction count, run `--callgrind` with `WEIR_HTTP1_ENGINE=pingora`
in the environment.

`--sandbox-off` adds the same weir binary started with `--sandbox off`
(`weir-nosandbox`) to every round: what the sandbox (the seccomp filter on
every system call, Landlock on every open) costs per request.

`--thp-on` adds the same weir binary started with `MIMALLOC_ALLOW_THP=1`
(`weir-thp`: transparent huge pages left on, as before `weir` turned them
off for itself) to every round.

`--callgrind FILE` (with `--callgrind-target floor_pingora`,
`floor_tokio` or `floor_tokio_maps`: one of the `--floors` proxies
instead) runs weir alone under `valgrind --tool=callgrind` (the
weighted route only: compiling the Wasm filter under valgrind takes
minutes), drives it with wrk for `--seconds` after a warm-up, and prints
the instructions per request, in all and in `memcpy`: a count that does
not depend on the machine's load, for changes too small for the rps
rounds to resolve. `callgrind_annotate --inclusive=yes FILE.1` lists
where they go (divide by the request count printed).

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
from harness import Stack, cpu_times, family, free_port, log  # noqa: E402


def cpu(pids: list[int]) -> tuple[float, float, int, int]:
    """User and kernel CPU seconds, voluntary and involuntary switches."""
    user, kernel = cpu_times(pids)
    vol = invol = 0
    for pid in pids:
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


def record(out: Path, pid: int, url: str, seconds: int, connections: int) -> None:
    """A call-graph profile of weir over one wrk window."""
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "--call-graph", "dwarf,32768",
                             "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    run.wrk(url, "plain.lua", seconds, connections)
    perf.send_signal(2)
    perf.wait(timeout=120)
    log(f"profile of {pid} written to {out}")


def callgrind(weir: Path, out: Path, seconds: int, target: str = "weir") -> None:
    """Instructions per proxied GET, counted by callgrind over a wrk window."""
    with tempfile.TemporaryDirectory(prefix="weir-callgrind-") as tmp, Stack(Path(tmp)) as stack:
        ports = {k: free_port() for k in ("v1", "v2")}
        run.start_upstream(stack, ports)
        cfg = Path(tmp) / "weir.toml"
        cfg.write_text(run.SERVER_TOML + run.weighted_route(ports))
        argv = [str(weir), "--config", str(cfg)]
        if target != "weir":  # a floor: gateway/examples/floor_*
            binary, maps = target.removesuffix("_maps"), target.endswith("_maps")
            argv = [str(weir.parent / "examples" / binary), "--upstream", f"127.0.0.1:{ports['v1']}",
                    *(["--header-maps"] if maps else [])]
        proc = stack.spawn("weir", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
                           env={**os.environ, "WEIR_LOG": "warn"}, stdout=subprocess.PIPE)
        fields = run.listening_fields(proc.stdout.readline().decode() if proc.stdout else "")
        if "proxy" not in fields:
            raise RuntimeError(f"{target} under callgrind did not start; see {tmp}/weir.log")
        url = f"http://{fields['proxy']}"
        if "admin" in fields:
            run.wait_http(f"http://{fields['admin']}/readyz", 120)
        else:
            run.wait_http(f"{url}/v1/models", 120)
        run.wrk(url, "plain.lua", 3, 10)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        row = run.wrk(url, "plain.lua", seconds, 10)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        n = row["requests"]
    dump = Path(f"{out}.1")
    report = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", str(dump)],
                            capture_output=True, text=True, check=True).stdout
    total = memcpy = 0
    for line in report.splitlines():
        words = line.split()
        if not words or not words[0].replace(",", "").isdigit():
            continue
        count = int(words[0].replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = count
        elif "__memcpy" in line or "__memmove" in line:
            memcpy += count
    print(f"callgrind: {n} requests; {total / n:,.0f} instructions per request, "
          f"{memcpy / n:,.0f} of them in memcpy; profile in {dump}")


def start_floor(stack: Stack, binary: Path, ports: dict, extra: tuple[str, ...] = ()) -> tuple[str, int]:
    """Starts one of the `gateway/examples/floor_*` proxies on the proxy's
    CPU, in front of the `v1` upstream; returns its URL and PID once it
    answers."""
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: cargo build --release -p weir-gateway --examples")
    name = binary.name + "".join(extra).replace("--", "-")
    proc = stack.spawn(name, run.pin(1) + [str(binary), "--upstream", f"127.0.0.1:{ports['v1']}", *extra],
                       stdout=subprocess.PIPE)
    fields = run.listening_fields(proc.stdout.readline().decode() if proc.stdout else "")
    if "proxy" not in fields:
        raise RuntimeError(f"{name} did not start; see {stack.tmp / f'{name}.log'}")
    url = f"http://{fields['proxy']}"
    run.wait_http(f"{url}/v1/models")
    return url, proc.pid


def spread(values: list[float], fmt: str = ".2f") -> str:
    """Median (min–max) of `values`, each formatted with `fmt`."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--bin-dir", type=Path, help="take weir from here instead of building")
    ap.add_argument("--allocs", action="store_true", help="also count weir's allocations per request (uprobes)")
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="another weir binary measured in the same rounds (weir-b, then weir-c, ...); repeatable")
    ap.add_argument("--floors", action="store_true",
                    help="also measure the floor_pingora and floor_tokio examples "
                    "(floor-pingora, floor-tokio, floor-tokio-maps)")
    ap.add_argument("--pingora", action="store_true",
                    help="also measure the same weir with WEIR_HTTP1_ENGINE=pingora (weir-pingora)")
    ap.add_argument("--sandbox-off", action="store_true",
                    help="also measure the same weir with --sandbox off (weir-nosandbox)")
    ap.add_argument("--thp-on", action="store_true",
                    help="also measure the same weir with MIMALLOC_ALLOW_THP=1 (weir-thp)")
    ap.add_argument("--record", type=Path, help="write a perf profile of weir under load to this file")
    ap.add_argument("--callgrind", type=Path, help="count weir's instructions per request under callgrind, "
                    "profile written to this file (.1)")
    ap.add_argument("--callgrind-target", choices=("weir", "floor_pingora", "floor_tokio", "floor_tokio_maps"),
                    default="weir",
                    help="what --callgrind counts: weir, or one of the --floors proxies")
    args = ap.parse_args()
    run.ensure_tools(False)
    weir = (args.bin_dir / "weir" if args.bin_dir else run.build() / "weir").resolve()
    if args.callgrind:
        callgrind(weir, args.callgrind.resolve(), args.seconds, args.callgrind_target)
        return 0
    rows: list[dict] = []
    allocs: dict = {}
    with tempfile.TemporaryDirectory(prefix="weir-budget-") as tmp, Stack(Path(tmp)) as stack:
        ports = {k: free_port() for k in ("v1", "v2", "nginx", "sse")}
        ports["sse"] = f"127.0.0.1:{ports['sse']}"
        run.start_upstream(stack, ports)
        nginx_url = run.start_nginx_proxy(stack, ports)
        weir_url = run.start_weir(stack, weir, ports)
        nginx_pid = int((Path(tmp) / "nginx-proxy.pid").read_text())
        weir_pid = stack.procs["weir"].pid
        proxies = [("nginx", nginx_url, nginx_pid), ("weir", weir_url, weir_pid)]
        for i, other in enumerate(p.resolve() for p in args.compare):
            if other == weir:
                raise SystemExit("--compare names the same binary as weir")
            name = f"weir-{chr(ord('b') + i)}"
            log(f"{name} is {other}")
            proxies.append((name, run.start_weir(stack, other, ports, name=name), stack.procs[name].pid))
        if args.floors:
            for name, extra in (("floor_pingora", ()), ("floor_tokio", ()), ("floor_tokio", ("--header-maps",))):
                url, pid = start_floor(stack, weir.parent / "examples" / name, ports, extra)
                proxies.append((name.replace("_", "-") + ("-maps" if extra else ""), url, pid))
        if args.pingora:
            url = run.start_weir(stack, weir, ports, name="weir-pingora", env={"WEIR_HTTP1_ENGINE": "pingora"})
            proxies.append(("weir-pingora", url, stack.procs["weir-pingora"].pid))
        if args.sandbox_off:
            url = run.start_weir(stack, weir, ports, extra=("--sandbox", "off"), name="weir-nosandbox")
            proxies.append(("weir-nosandbox", url, stack.procs["weir-nosandbox"].pid))
        if args.thp_on:
            url = run.start_weir(stack, weir, ports, name="weir-thp", env={"MIMALLOC_ALLOW_THP": "1"})
            proxies.append(("weir-thp", url, stack.procs["weir-thp"].pid))
        for _, url, _ in proxies:  # warm-up
            run.wrk(url, "plain.lua", 1, args.connections)
        for r in range(args.rounds):
            # The order rotates each round: whichever proxy runs right
            # after nginx was measured slower (more involuntary context
            # switches on the shared CPU), which favoured the later ones.
            shift = r % len(proxies)
            for name, url, pid in proxies[shift:] + proxies[:shift]:
                row = measure(name, url, pid, args.seconds, args.connections)
                log(f"round {r + 1} {name}: {row['rps']:.0f} rps, user {row['user_us']:.1f} µs, "
                    f"kernel {row['kernel_us']:.1f} µs, syscalls {row['syscalls']}")
                rows.append(row)
        if args.allocs:
            allocs = allocations(weir, weir_pid, weir_url, args.seconds, args.connections)
        if args.record:
            record(args.record, weir_pid, weir_url, args.seconds, args.connections)
            nginx_worker = [p for p in family(nginx_pid) if p != nginx_pid] or [nginx_pid]
            record(Path(f"{args.record}.nginx"), nginx_worker[0], nginx_url, args.seconds, args.connections)
    print("| proxy | rps | user µs/req | kernel µs/req | syscalls/req | voluntary switches/req | involuntary/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in proxies:
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
