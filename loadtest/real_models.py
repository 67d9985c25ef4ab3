"""Real-model scenarios: weir-engine serving the pretrained models of
`.models/repo` (scripts/setup-models.sh) against plain onnxruntime loops
over the same ONNX files (loadtest/reference/), with the same number of
intra-op threads.

- `real_one_stream`: one greedy `/v1/completions` request of TOKENS new
  tokens (`ignore_eos`) to `smollm2-135m-instruct:1`, the whole request
  timed, against `ort_greedy.py --bench` (prefill + decode timed); rounds
  interleaved: engine, reference, engine, reference, ...
- `real_streams16`: STREAMS streamed requests of TOKENS tokens in flight
  (closed loop, sse_load.py): aggregate tokens/s, TTFT; compared with the
  engine's one-stream figure.
- `real_embed`: EMBED_CONCURRENCY single-sentence `/v1/embeddings`
  requests in flight (wrk, wrk/embed.lua) against `ort_embed.py --bench`
  (batches of the same 32 sentences); interleaved rounds.
- `real_rss`: VmRSS of the engine with the three versions loaded, idle
  after start, and again (with the peak, VmHWM) after the other scenarios.

The models are found at $WEIR_MODELS_REPO or ROOT/.models/repo, the
reference's Python at $WEIR_PYTHON or ROOT/.venv/bin/python; without them
the scenarios are skipped (`unavailable` says why). Nothing is pinned: the
engine and the reference each get THREADS intra-op threads, and the load
generators (one request at a time, or wrk) take little of the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from harness import HERE, ROOT, Stack, listening_fields, log, ort_lib, read_line, sse_load, wait_http, wrk

NAMES = ["real_one_stream", "real_streams16", "real_embed", "real_rss"]
# A scenario whose ratio needs another one's figure.
NEEDS = {"real_streams16": "real_one_stream"}

LLM, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
# One engine serves all three; the LLM scenarios use version 1 (fp16
# stored, fp32 compute), the one the reference figures were taken on.
VERSIONS = [(LLM, "1"), (LLM, "2"), (EMBED, "1")]
THREADS = 2
PROMPT = "The capital of France is"
TOKENS, QUICK_TOKENS = 128, 8
ROUNDS = 5
STREAMS = 16
EMBED_CONCURRENCY = 32
# Seconds one stream of STREAMS may take before it counts as an error: a
# wave of 16 x 128 tokens on a busy 2-core machine takes tens of seconds.
STREAM_TIMEOUT = 300.0


def repo() -> Path:
    return Path(os.environ.get("WEIR_MODELS_REPO") or ROOT / ".models" / "repo")


def python() -> str:
    return os.environ.get("WEIR_PYTHON") or str(ROOT / ".venv" / "bin" / "python")


def unavailable() -> str | None:
    """Why the scenarios cannot run here, or None."""
    missing = [f"{m}/{v}" for m, v in VERSIONS if not (repo() / m / v / "model.onnx").is_file()]
    if missing:
        return (f"no {', '.join(missing)} in {repo()} (run `bash scripts/setup-models.sh`, "
                "or point WEIR_MODELS_REPO at its repository folder)")
    probe = subprocess.run([python(), "-c", "import onnxruntime, tokenizers, numpy"],
                           capture_output=True, text=True) if Path(python()).is_file() else None
    if probe is None or probe.returncode != 0:
        return (f"{python()} cannot import onnxruntime, tokenizers and numpy (run "
                "`bash scripts/setup-python.sh`, or point WEIR_PYTHON at such an interpreter)")
    return None


def start_engine(stack: Stack, weir: Path) -> tuple[str, int]:
    """weir-engine serving VERSIONS with THREADS intra-op threads; returns
    its HTTP URL and process id. The manifests are checked with the
    engine's default key (REPO/../keys/models.pub, where setup-models.sh
    puts it) unless WEIR_ENGINE_PUBLIC_KEY names another."""
    env = {**os.environ, "ORT_DYLIB_PATH": ort_lib(), "RUST_LOG": "warn"}
    argv = [str(weir.parent / "weir-engine"), "--models", str(repo()), "--intra-threads", str(THREADS),
            "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
    for model, version in VERSIONS:
        argv += ["--model", f"{model}:{version}"]
    proc = stack.spawn("engine-real", argv, env=env, stdout=subprocess.PIPE)
    line = read_line(proc, "weir-engine (real models)", stack.tmp / "engine-real.log")
    url = f"http://{listening_fields(line)['http']}"
    wait_http(url + "/v2/health/ready", limit=120)
    return url, proc.pid


def memory(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # kB
    return out


def post(url: str, body: dict, timeout: float = STREAM_TIMEOUT) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def reference(script: str, *args: str) -> dict | None:
    """One run of a reference loop with --bench --json; None (logged) when it fails."""
    argv = [python(), str(HERE / "reference" / script), *args, "--bench", "--json", "--threads", str(THREADS)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"  {script} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    """Median, min and max of the rounds (zeros when there are none)."""
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "rounds": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def completion(tokens: int, stream: bool = False) -> dict:
    body = {"model": f"{LLM}:1", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def one_stream(url: str, tokens: int, rounds: int) -> dict:
    """One request at a time, engine and reference in turn, `rounds` times."""
    engine, ref, errors = [], [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        try:
            got = post(url + "/v1/completions", completion(tokens))["usage"]["completion_tokens"]
        except (OSError, ValueError, KeyError) as e:
            log(f"  engine request failed: {e}")
            got = None
        dt = time.perf_counter() - t0
        if got == tokens:
            engine.append(tokens / dt)
        else:
            errors += 1
            if got is not None:
                log(f"  engine made {got} tokens, asked for {tokens}")
        row = reference("ort_greedy.py", str(repo() / LLM / "1"), "-n", str(tokens), "--prompt", PROMPT)
        if row is None or row["new_tokens"] != tokens:
            errors += 1
        else:
            ref.append(row["tokens_per_s"])
    return {"kind": "real", "tokens_per_stream": tokens, "threads": THREADS, "errors": errors,
            "engine_tokens_per_s": spread(engine), "reference_tokens_per_s": spread(ref)}


def streams(url: str, tokens: int, seconds: int) -> dict:
    """STREAMS streams in flight for `seconds` (closed loop; the streams in
    flight at the end are finished and counted)."""
    row = sse_load(url + "/v1/completions", seconds, STREAMS, json.dumps(completion(tokens, stream=True)),
                   pinned=False, timeout=STREAM_TIMEOUT)
    if row["tokens"] != row["streams"] * tokens:
        log(f"  {row['tokens']} tokens in {row['streams']} streams, expected {tokens} each")
        row["errors"] += 1
    return {"kind": "real", **row, "tokens_per_stream": tokens, "threads": THREADS}


def embed(url: str, slice_s: int, rounds: int) -> dict:
    """wrk with EMBED_CONCURRENCY connections and the reference on batches
    of 32, `slice_s` seconds each, in turn, `rounds` times."""
    errors = 0
    try:
        got = post(url + "/v1/embeddings", {"model": f"{EMBED}:1", "input": "A man is playing a guitar. (0)"})
        dims = len(got["data"][0]["embedding"])
    except (OSError, ValueError, KeyError, IndexError) as e:
        log(f"  embedding request failed: {e}")
        dims = 0
    if dims != 384:
        errors += 1
    engine, ref, p50, p99 = [], [], [], []
    for _ in range(rounds):
        row = wrk(url, "embed.lua", slice_s, EMBED_CONCURRENCY, "/v1/embeddings", pinned=False)
        errors += row["errors"]
        engine.append(row["rps"])
        p50.append(row["p50"])
        p99.append(row["p99"])
        got = reference("ort_embed.py", str(repo() / EMBED / "1"), "--seconds", str(slice_s))
        if got is None:
            errors += 1
        else:
            ref.append(got["sentences_per_s"])
    return {"kind": "real", "concurrency": EMBED_CONCURRENCY, "threads": THREADS, "errors": errors,
            "engine_sentences_per_s": spread(engine), "reference_sentences_per_s": spread(ref),
            "p50": statistics.median(p50), "p99": statistics.median(p99)}


def run(stack: Stack, weir: Path, chosen: set[str], seconds: int, quick: bool) -> dict:
    """Starts one engine and runs the chosen real-model scenarios; returns
    their rows by name."""
    tokens, rounds = (QUICK_TOKENS, 1) if quick else (TOKENS, ROUNDS)
    slice_s = max(1, round(seconds / rounds))
    log(f"weir-engine on {repo()}: {', '.join(f'{m}:{v}' for m, v in VERSIONS)}, {THREADS} intra-op threads")
    url, pid = start_engine(stack, weir)
    out = {}
    if "real_rss" in chosen:
        idle = memory(pid)
        out["real_rss"] = {"kind": "real", "errors": 0, "idle_mib": idle["VmRSS"], "idle_peak_mib": idle["VmHWM"]}
        log(f"real_rss: {idle['VmRSS']:.0f} MiB idle (peak while loading {idle['VmHWM']:.0f} MiB)")
    if {"real_one_stream", "real_streams16"} & chosen:
        # Warm-up (first-run allocations); a failure shows in the scenarios.
        with contextlib.suppress(OSError, ValueError):
            post(url + "/v1/completions", completion(4))
    if "real_one_stream" in chosen:
        log(f"real_one_stream: {rounds} round(s) of {tokens} tokens, engine and onnxruntime in turn")
        out["real_one_stream"] = one_stream(url, tokens, rounds)
    if "real_streams16" in chosen:
        log(f"real_streams16: {seconds}s, {STREAMS} streams of {tokens} tokens in flight")
        out["real_streams16"] = streams(url, tokens, seconds)
    if "real_embed" in chosen:
        log(f"real_embed: {rounds} round(s) of {slice_s}s, {EMBED_CONCURRENCY} requests in flight "
            "and onnxruntime batches of 32 in turn")
        out["real_embed"] = embed(url, slice_s, rounds)
    if "real_rss" in chosen and len(out) > 1:
        after = memory(pid)
        out["real_rss"] |= {"after_mib": after["VmRSS"], "peak_mib": after["VmHWM"]}
    return out


def evaluate(r: dict, t: dict) -> tuple[dict, list[tuple]]:
    """The ratios of the real-model scenarios that ran, and their checks
    against targets.toml ((name, value, op, goal) as run.py's evaluate)."""
    ratios, checks = {}, []
    one = r.get("real_one_stream")
    if one and one["engine_tokens_per_s"]["rounds"] and one["reference_tokens_per_s"]["rounds"]:
        ratio = one["engine_tokens_per_s"]["median"] / one["reference_tokens_per_s"]["median"]
        ratios["real_one_stream_engine_over_reference"] = ratio
        checks.append(("real: one stream tokens/s, weir-engine / onnxruntime", ratio, ">=",
                       t["real_one_stream_ratio_min"]))
    many = r.get("real_streams16")
    if many and one and one["engine_tokens_per_s"]["rounds"]:
        ratio = many["tokens_per_s"] / one["engine_tokens_per_s"]["median"]
        ratios["real_streams16_over_one_stream"] = ratio
        checks.append((f"real: tokens/s at {STREAMS} streams / one stream", ratio, ">=",
                       t["real_streams16_over_one_stream_min"]))
    emb = r.get("real_embed")
    if emb and emb["engine_sentences_per_s"]["rounds"] and emb["reference_sentences_per_s"]["rounds"]:
        ratio = emb["engine_sentences_per_s"]["median"] / emb["reference_sentences_per_s"]["median"]
        ratios["real_embed_engine_over_reference"] = ratio
        checks.append(("real: sentences/s, weir-engine / onnxruntime", ratio, ">=", t["real_embed_ratio_min"]))
    if "real_rss" in r:
        checks.append(("real: engine RSS idle, three versions (MiB)", r["real_rss"]["idle_mib"], "<=",
                       t["real_rss_idle_mib_max"]))
    return ratios, checks


def table(r: dict) -> list[str]:
    """The Markdown lines of the real-model scenarios in `r` (none if none ran)."""
    if not any(n in r for n in NAMES):
        return []

    def fig(s: dict) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})" if s["rounds"] else "–"

    lines = ["", f"Real models (`.models/repo`; weir-engine and plain onnxruntime in Python, {THREADS} intra-op "
             "threads each, nothing pinned; median (min–max) over interleaved rounds):", "",
             "| scenario | measure | weir-engine | onnxruntime | errors |", "|---|---|---:|---:|---:|"]
    if s := r.get("real_one_stream"):
        n = len(s["engine_tokens_per_s"]["rounds"])
        lines.append(f"| real_one_stream | tokens/s, one greedy stream of {s['tokens_per_stream']} tokens, {n} round(s) "
                     f"| {fig(s['engine_tokens_per_s'])} | {fig(s['reference_tokens_per_s'])} | {s['errors']} |")
    if s := r.get("real_streams16"):
        lines.append(f"| real_streams16 | tokens/s, {s['connections']} streams of {s['tokens_per_stream']} tokens "
                     f"in flight ({s['streams']} streams done; TTFT P50 {s['ttft_p50'] / 1e3:.0f} ms, P99 "
                     f"{s['ttft_p99'] / 1e3:.0f} ms) | {s['tokens_per_s']:.1f} | – | {s['errors']} |")
    if s := r.get("real_embed"):
        lines.append(f"| real_embed | sentences/s, {s['concurrency']} one-sentence requests in flight "
                     f"(P50 {s['p50'] / 1e3:.1f} ms, P99 {s['p99'] / 1e3:.1f} ms) / batches of 32 "
                     f"| {fig(s['engine_sentences_per_s'])} | {fig(s['reference_sentences_per_s'])} "
                     f"| {s['errors']} |")
    if s := r.get("real_rss"):
        after = (f"; after the runs {s['after_mib']:.0f} MiB, peak {s['peak_mib']:.0f} MiB"
                 if "after_mib" in s else "")
        lines.append(f"| real_rss | VmRSS MiB, three versions loaded, idle (peak while loading "
                     f"{s['idle_peak_mib']:.0f}{after}) | {s['idle_mib']:.0f} | – | {s['errors']} |")
    return lines
