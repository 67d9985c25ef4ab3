#!/usr/bin/env python3
"""Build weir-engine's model repository, deterministically.

    python backend-engine/models/build.py            # rebuild repo/, golden/, re-sign if needed
    python backend-engine/models/build.py --check    # rebuild in a temp dir and compare (no key needed)
    python backend-engine/models/build.py --new-key  # rebuild, new signing key, re-sign everything
    python backend-engine/models/build.py --out DIR  # build DIR/repo, DIR/golden, DIR/keys

Models: ``mlp`` 1 (a fixed-seed Gemm/Relu/Gemm/Softmax) and ``tiny-lm`` 1 and 2
(byte-level language models trained here, in numpy, on corpus/*.txt).
Layout, manifest format and signing: docs/model-repository.md. Run it with
the pinned packages of scripts/requirements.txt (scripts/setup-python.sh).
"""

from __future__ import annotations

import os
import platform
import sys


def _pin_numerics() -> bool:
    """Single-threaded BLAS and one fixed set of CPU kernels, so that training
    gives the same bits on every x86-64 machine with AVX2 (and on reruns).
    Must run before numpy is imported. Returns whether kernels are pinned."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = set(next((l for l in f if l.startswith("flags")), "").split())
    except OSError:
        flags = set()
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
        os.environ["NPY_DISABLE_CPU_FEATURES"] = "X86_V4 AVX512_ICL AVX512_SPR"
        return True
    return False


PINNED = _pin_numerics()
sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Goldens of the models converted from PyPI wheels (backend-engine/models/convert):
# written by `python -m convert goldens`, so --check leaves them alone.
CONVERTED_GOLDENS = ("smollm2-135m-instruct-", "all-minilm-l6-v2-")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from buildlib import export, golden, manifest  # noqa: E402
from buildlib.corpus import load_documents  # noqa: E402
from buildlib.tinylm import LmConfig, param_names, train  # noqa: E402

MODELS_DIR = Path(HERE)
CORPUS_DIR = MODELS_DIR / "corpus"
NUMPY_VERSION = "2.4.6"  # scripts/requirements.txt; other versions may train other bits

MLP_VERSION = "1"
MLP_SEED = 1601
LM_CONFIGS = [
    # v1: small and briefly trained; v2: wider embedding and hidden layer, trained longer.
    LmConfig(version="1", context=16, embed=16, hidden=(384,), steps=6000, batch=128, lr=0.004, seed=101, short_prob=0.5),
    LmConfig(version="2", context=16, embed=32, hidden=(768,), steps=7000, batch=128, lr=0.004, seed=202, short_prob=0.5),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mlp_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(MLP_SEED)
    return {
        "fc1.weight": rng.standard_normal((16, 32), dtype=np.float32) * np.float32(0.25),
        "fc1.bias": rng.standard_normal(32, dtype=np.float32) * np.float32(0.1),
        "fc2.weight": rng.standard_normal((32, 4), dtype=np.float32) * np.float32(0.25),
        "fc2.bias": rng.standard_normal(4, dtype=np.float32) * np.float32(0.1),
    }


def train_lm(cfg: LmConfig) -> tuple[bytes, dict]:
    """Worker: train one tiny-lm version and return its ONNX bytes."""
    params, record = train(cfg, load_documents(CORPUS_DIR))
    return export.lm_onnx(params, param_names(cfg), cfg.context, cfg.version), record


def write_version(repo: Path, model: str, version: str, onnx_bytes: bytes, toml_bytes: bytes) -> None:
    vdir = repo / model / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.onnx").write_bytes(onnx_bytes)
    (vdir / "model.toml").write_bytes(toml_bytes)


def build(out: Path, jobs: int) -> list[str]:
    """Write out/repo/** (no manifests) and out/golden/*.json; returns problems
    found by the onnxruntime cross-check."""
    started = time.perf_counter()
    repo, gold = out / "repo", out / "golden"
    problems: list[str] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        # Longest job first, so two workers finish together.
        futures = {cfg.version: pool.submit(train_lm, cfg) for cfg in sorted(LM_CONFIGS, key=lambda c: -c.steps * c.hidden[0])}

        mlp_bytes = export.mlp_onnx(mlp_weights(), MLP_VERSION)
        mlp_toml = export.model_toml(
            "mlp", MLP_VERSION, "tensor", [("INPUT0", "FP32", [-1, 16])], [("OUTPUT0", "FP32", [-1, 4])]
        )
        write_version(repo, "mlp", MLP_VERSION, mlp_bytes, mlp_toml)
        doc = golden.mlp_golden(mlp_bytes, MLP_VERSION)
        golden.write(gold / f"mlp-{MLP_VERSION}.json", doc)
        problems += golden.cross_check_mlp(mlp_bytes, doc)

        for cfg in LM_CONFIGS:
            onnx_bytes, record = futures[cfg.version].result()
            log(f"  tiny-lm v{cfg.version}: trained {record}")
            toml = export.model_toml(
                "tiny-lm",
                cfg.version,
                "lm",
                [("input_ids", "INT64", [-1, cfg.context])],
                [("logits", "FP32", [-1, 256])],
                lm_context=cfg.context,
            )
            write_version(repo, "tiny-lm", cfg.version, onnx_bytes, toml)
            doc, margin = golden.lm_golden(onnx_bytes, cfg.version, cfg.context)
            golden.write(gold / f"tiny-lm-{cfg.version}.json", doc)
            log(f"  tiny-lm v{cfg.version}: {len(onnx_bytes)} bytes, smallest greedy top-2 logit gap {margin:.3g}")
            for case in doc["greedy"]:
                log(f"    {case['prompt']!r} -> {case['generated_text']!r}")
            problems += golden.cross_check_lm(onnx_bytes, doc)
    log(f"built {out} in {time.perf_counter() - started:.1f}s")
    return problems


def versions(repo: Path) -> list[tuple[str, str, Path]]:
    return [
        (mdir.name, vdir.name, vdir)
        for mdir in sorted(p for p in repo.iterdir() if p.is_dir())
        for vdir in sorted(p for p in mdir.iterdir() if p.is_dir())
    ]


def sign_all(out: Path, key_path: Path, fresh: bool) -> None:
    """Re-sign where a manifest no longer verifies; with ``fresh`` (or no
    private key when one is needed) make a new keypair and re-sign all."""
    pub_path = out / "keys" / "models.pub"
    todo = versions(out / "repo")
    if not fresh:
        public = manifest.read_public(pub_path) if pub_path.exists() else None
        stale = [v for v in todo if public is None or manifest.verify(v[2], v[0], v[1], public)]
        if not stale:
            log("manifests: all verify against models.pub, nothing to sign")
            return
        if key_path.exists():
            key = manifest.read_private(key_path)
            if manifest.raw_public(key) == public:
                todo = stale
            else:
                log(f"manifests: {key_path} does not match models.pub; writing its public key and re-signing all")
                manifest.write_public(pub_path, manifest.raw_public(key))
        else:
            log(f"manifests: {len(stale)} to sign and no {key_path}: making a new keypair")
            fresh = True
    if fresh:
        key = manifest.new_key()
        manifest.write_private(key_path, key)
        manifest.write_public(pub_path, manifest.raw_public(key))
        log(f"manifests: new key {manifest.key_id(manifest.raw_public(key))} in {key_path} (keep it out of git)")
    for model, version, vdir in todo:
        manifest.sign(vdir, model, version, key)
        log(f"manifests: signed {model}/{version}")


def tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check(jobs: int) -> int:
    """Rebuild in a temp dir; compare with the committed files and verify
    every committed manifest. Returns the exit status."""
    if not PINNED:
        log("warning: no AVX2/FMA x86-64 CPU; CPU kernels are not pinned and training may differ")
    if np.__version__ != NUMPY_VERSION:
        log(f"warning: numpy {np.__version__}, the committed models were built with {NUMPY_VERSION}")
    tmp = Path(tempfile.mkdtemp(prefix="weir-models-check-"))
    try:
        problems = build(tmp, jobs)
        for sub in ("repo", "golden"):
            built, committed = tree(tmp / sub), tree(MODELS_DIR / sub)
            for path in sorted(set(built) | set(committed)):
                if path.endswith("/" + manifest.MANIFEST):
                    continue
                # The real models' goldens come from the converter
                # (scripts/setup-models.sh, convert/goldens.py), not from here.
                if sub == "golden" and path.startswith(CONVERTED_GOLDENS):
                    continue
                if path not in committed:
                    problems.append(f"{sub}/{path}: built but not committed")
                elif path not in built:
                    problems.append(f"{sub}/{path}: committed but not produced by build.py")
                elif built[path] != committed[path]:
                    problems.append(f"{sub}/{path}: rebuilt bytes differ from the committed file")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pub_path = MODELS_DIR / "keys" / "models.pub"
    if not pub_path.exists():
        problems.append("keys/models.pub is missing")
    else:
        public = manifest.read_public(pub_path)
        for model, version, vdir in versions(MODELS_DIR / "repo"):
            problems += manifest.verify(vdir, model, version, public)
    for p in problems:
        log(f"FAIL {p}")
    log("check: OK" if not problems else f"check: {len(problems)} problem(s)")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with the committed files")
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="output folder (default: this script's folder)")
    ap.add_argument("--key", type=Path, help="signing key (default: OUT/keys/signing.key)")
    ap.add_argument("--new-key", action="store_true", help="make a new signing keypair and re-sign everything")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="training processes (default: 2)")
    args = ap.parse_args()
    jobs = max(1, args.jobs)
    if args.check:
        return check(jobs)
    out = args.out.resolve()
    problems = build(out, jobs)
    if problems:
        for p in problems:
            log(f"FAIL {p}")
        return 1
    sign_all(out, (args.key or out / "keys" / "signing.key").resolve(), args.new_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
