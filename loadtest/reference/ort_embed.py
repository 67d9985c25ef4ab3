#!/usr/bin/env python3
"""Reference sentence embeddings for an embedding version of the model repository.

Tokenize (the version's tokenizer.json, padding added here to the longest
sentence of the batch), run the ONNX encoder (input_ids, attention_mask,
token_type_ids -> last_hidden_state), pool as model.toml says (mean over the
attention mask, CLS, or last token) and L2-normalise when ``normalize``.

    python loadtest/reference/ort_embed.py REPO/all-minilm-l6-v2/1 "A sentence." "Another one."
    python loadtest/reference/ort_embed.py REPO/all-minilm-l6-v2/1 --bench --threads 2

``--bench`` prints sentences/s for batches of 32 (``--json``: as one JSON line,
read by loadtest/real_models.py). The batch is BENCH_SENTENCES, the same 32
sentences loadtest/wrk/embed.lua sends to weir-engine one per request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort


# The --bench batch: four sentences numbered 0..31 so that no two are alike.
# loadtest/wrk/embed.lua builds the same list.
BENCH_BASE = ["A man is playing a guitar.", "The quick brown fox jumps over the lazy dog.",
              "Weir routes requests to model servers and balances the load between them.",
              "What is the capital of France?"]
BENCH_SENTENCES = [BENCH_BASE[i % len(BENCH_BASE)] + f" ({i})" for i in range(32)]


class Embedder:
    def __init__(self, vdir: Path | str, threads: int = 0, providers=None):
        vdir = Path(vdir)
        self.toml = tomllib.loads((vdir / "model.toml").read_text())
        self.cfg = self.toml["embedding"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(vdir / "model.onnx"), opts,
                                         providers=providers or ["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.sess.get_inputs()}
        from tokenizers import Tokenizer
        self.tokenizer = Tokenizer.from_file(str(vdir / self.cfg["tokenizer"]))

    def tokenize(self, sentences: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(sentences)]

    def embed(self, sentences: list[str]) -> np.ndarray:
        rows = self.tokenize(sentences)
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.sess.run(None, {k: v for k, v in feed.items() if k in self.input_names})[0]
        pooling = self.cfg.get("pooling", "mean")
        if pooling == "mean":
            m = mask[..., None].astype(np.float32)
            out = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        elif pooling == "cls":
            out = hidden[:, 0]
        else:
            out = hidden[np.arange(len(rows)), mask.sum(1) - 1]
        if self.cfg.get("normalize", True):
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version_dir", type=Path)
    ap.add_argument("sentences", nargs="*")
    ap.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0 = onnxruntime default)")
    ap.add_argument("--bench", action="store_true", help="sentences/s for batches of 32")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true", help="with --bench: print the figures as one JSON line")
    args = ap.parse_args()
    emb = Embedder(args.version_dir, threads=args.threads)
    if args.bench:
        batch = BENCH_SENTENCES
        emb.embed(batch)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            emb.embed(batch)
            n += len(batch)
        dt = time.perf_counter() - t0
        if args.json:
            print(json.dumps({"batch": len(batch), "threads": args.threads, "sentences": n, "seconds": dt,
                              "sentences_per_s": n / dt}))
            return 0
        print(f"batch 32, threads {args.threads or 'default'}: {n / dt:.1f} sentences/s")
        return 0
    vecs = emb.embed(args.sentences or ["A man is playing a guitar.", "A person plays the guitar."])
    for s, v in zip(args.sentences, vecs):
        print(f"{s!r}: {np.array2string(v[:8], precision=4)} ...")
    if len(vecs) >= 2:
        print("cosine(0,1) =", float(vecs[0] @ vecs[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
