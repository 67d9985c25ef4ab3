"""What the load-test scenarios share: processes started and stopped
together (`Stack`), readiness waits, CPU pinning, and the two load
generators (wrk for plain requests, sse_load.py for streams), each returning
one dict of figures. Used by run.py and real_models.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_DIR = HERE / "wrk"


def log(msg: str) -> None:
    print(f"[loadtest] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and kernel CPU seconds of `pids` so far (all their threads;
    /proc/PID/stat, in clock ticks)."""
    user = kernel = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / TICK
        kernel += int(fields[12]) / TICK
    return user, kernel


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
        # The last process started under each name.
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict | None = None, stdout=None) -> subprocess.Popen:
        logf = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(argv, stdout=stdout or logf, stderr=logf, env=env)
        self.procs[name] = proc

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


def read_line(proc: subprocess.Popen, what: str, log_path: Path) -> str:
    line = proc.stdout.readline().decode() if proc.stdout else ""
    if not line:
        raise RuntimeError(f"{what} did not start; see {log_path}")
    return line


def listening_fields(line: str) -> dict[str, str]:
    """The `key=value` words of a readiness line such as
    "weir-engine listening http=127.0.0.1:PORT grpc=127.0.0.1:PORT"."""
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def ort_lib() -> str:
    """The ONNX Runtime library for weir-engine: $ORT_DYLIB_PATH, or the one
    scripts/setup-ort.sh fetches into .ort/ (its last line is the path)."""
    lib = os.environ.get("ORT_DYLIB_PATH")
    if lib and Path(lib).is_file():
        return lib
    out = subprocess.run([str(ROOT / "scripts" / "setup-ort.sh")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def wrk(url: str, script: str, seconds: int, connections: int, path: str = "", pinned: bool = True) -> dict:
    """Closed-loop wrk (one thread) with a script of wrk/ (its path is
    $WEIR_PATH when given), pinned to the load generator's CPU unless
    `pinned` is false."""
    argv = (pin(0) if pinned else []) + ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                                         "-s", str(WRK_DIR / script), url + "/v1/models"]
    env = {**os.environ, "WEIR_PATH": path} if path else None
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    row["rps"] = row["requests"] / (row["duration_us"] / 1e6)
    return row


def sse_load(url: str, seconds: int, connections: int, body: str, headers: tuple[str, ...] = (),
             expect_chunks: int | None = None, pinned: bool = True, timeout: float | None = None) -> dict:
    """Closed-loop streams with loadtest/sse_load.py, pinned like wrk unless
    `pinned` is false; `timeout` is the seconds one stream may take."""
    argv = (pin(0) if pinned else []) + [sys.executable, str(HERE / "sse_load.py"), "--url", url,
                                         "--body", body, "-c", str(connections), "--seconds", str(seconds)]
    for h in headers:
        argv += ["--header", h]
    if expect_chunks is not None:
        argv += ["--expect-chunks", str(expect_chunks)]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    if row["errors"]:
        log(f"  {row['errors']} broken stream(s): {row['error_kinds']}")
    return row
