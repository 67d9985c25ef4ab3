#!/usr/bin/env python3
"""What the process sandbox (`--sandbox`, docs/security.md) costs, measured
in one run with the sandbox on (`auto`) and off in alternating rounds:

- start-up: from exec to the first 200 of the readiness endpoint, for
  `weir` (the load test's config: weighted route and the bundled word
  filter, whose Wasm module is compiled inside the sandbox) and for
  `weir-engine` (the shipped `mlp` and `tiny-lm`);
- the engine's rate: wrk closed loop on `POST /v2/models/mlp/infer`
  (one engine of each kind, both pinned to CPU 1, wrk to CPU 0).

The gateway's rate with and without the sandbox: `budget.py --sandbox-off`.
Prints a Markdown table of medians (min–max).

    loadtest/sandbox_cost.py --bin-dir target/release
    loadtest/sandbox_cost.py --rounds 8 --seconds 4 --bin-dir target/release
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the load test's own process setup)
from budget import spread  # noqa: E402
from harness import Stack, free_port, listening_fields, log, ort_lib, pin, wrk  # noqa: E402


def ready_after(argv: list[str], ready_path: str, env: dict, key: str) -> float:
    """Seconds from exec of `argv` until GET `ready_path` (on the launch
    line's `key` address) answers 200; the process is stopped after."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        line = proc.stdout.readline().decode() if proc.stdout else ""
        addr = listening_fields(line).get(key)
        if not addr:
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        url = f"http://{addr}{ready_path}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            if time.monotonic() - start > 60:
                raise RuntimeError(f"{url} not ready after 60 s")
            time.sleep(0.002)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--bin-dir", type=Path, help="take the binaries from here instead of building")
    args = ap.parse_args()
    run.ensure_tools(False)
    weir = (args.bin_dir / "weir" if args.bin_dir else run.build() / "weir").resolve()
    engine = weir.parent / "weir-engine"
    env = {**os.environ, "ORT_DYLIB_PATH": ort_lib(), "RUST_LOG": "warn", "WEIR_LOG": "warn"}
    modes = {"on": "auto", "off": "off"}
    starts: dict[tuple[str, str], list[float]] = {}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="weir-sandbox-cost-") as tmp, Stack(Path(tmp)) as stack:
        ports = {k: free_port() for k in ("v1", "v2", "nginx", "sse")}
        ports["sse"] = f"127.0.0.1:{ports['sse']}"
        run.start_upstream(stack, ports)
        # The load test's weir config, written by start_weir (then stopped
        # with the stack): the same file for every start below.
        run.start_weir(stack, weir, ports, name="config-writer")
        cfg = Path(tmp) / "weir.toml"
        engine_args = ["--models", str(run.MODELS), "--model", "mlp", "--model", "tiny-lm:1",
                       "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
        for r in range(args.rounds):
            for mode, flag in modes.items():
                t = ready_after(pin(1) + [str(weir), "--config", str(cfg), "--sandbox", flag],
                                "/readyz", env, "admin")
                starts.setdefault(("weir", mode), []).append(t * 1000)
                t = ready_after(pin(1) + [str(engine), *engine_args, "--sandbox", flag],
                                "/v2/health/ready", env, "http")
                starts.setdefault(("weir-engine", mode), []).append(t * 1000)
            log(f"start-up round {r + 1}: " + ", ".join(f"{b} {m} {v[-1]:.1f} ms" for (b, m), v in starts.items()))
        urls = {}
        for mode, flag in modes.items():
            proc = stack.spawn(f"engine-{mode}", pin(1) + [str(engine), *engine_args, "--sandbox", flag],
                               env=env, stdout=subprocess.PIPE)
            fields = listening_fields(proc.stdout.readline().decode() if proc.stdout else "")
            urls[mode] = f"http://{fields['http']}"
            run.wait_http(urls[mode] + "/v2/health/ready")
        for mode in modes:  # warm-up
            wrk(urls[mode], "infer.lua", 1, args.connections, "/v2/models/mlp/infer")
        errors = 0
        for r in range(args.rounds):
            for mode in modes:
                row = wrk(urls[mode], "infer.lua", args.seconds, args.connections, "/v2/models/mlp/infer")
                errors += row.get("errors", 0) or 0
                rates[mode].append(row["rps"])
                log(f"rate round {r + 1} engine sandbox {mode}: {row['rps']:.0f} rps")
    print("| what | sandbox on | sandbox off |")
    print("|---|---:|---:|")
    for binary in ("weir", "weir-engine"):
        print(f"| {binary} start-up to ready, ms | {spread(starts[(binary, 'on')], '.1f')} | "
              f"{spread(starts[(binary, 'off')], '.1f')} |")
    print(f"| weir-engine rps, mlp infer, {args.connections} connections | {spread(rates['on'], '.0f')} | "
          f"{spread(rates['off'], '.0f')} |")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
