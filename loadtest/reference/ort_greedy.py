#!/usr/bin/env python3
"""Reference greedy decoding for a causal-lm version of the model repository.

A plain onnxruntime loop over an Optimum-style decoder with KV cache
(input_ids, attention_mask, position_ids, past_key_values.N.key/value ->
logits, present.N.key/value): one prefill run over the (left-padded) prompt
batch, then one run per new token feeding the presents back as the past.
Greedy = argmax of the last logits row (lowest id on ties). The goldens in
backend-engine/models/golden/ come from this loop, and ``--bench`` gives the
single-stream speed the engine is compared with.

    python loadtest/reference/ort_greedy.py REPO/smollm2-135m-instruct/1 --prompt "Hello" -n 32
    python loadtest/reference/ort_greedy.py REPO/smollm2-135m-instruct/1 --chat "What is 2+2?"
    python loadtest/reference/ort_greedy.py REPO/smollm2-135m-instruct/1 --bench --threads 2 -n 128

``--bench --json`` prints one JSON line (prompt_tokens, new_tokens, prefill_ms,
decode_tokens_per_s, tokens_per_s = new tokens over prefill + decode), read by
loadtest/real_models.py.

Needs numpy, onnxruntime, tokenizers, jinja2 (scripts/requirements.txt).
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


class Decoder:
    def __init__(self, vdir: Path | str, threads: int = 0, providers=None):
        vdir = Path(vdir)
        self.vdir = vdir
        self.toml = tomllib.loads((vdir / "model.toml").read_text())
        cl = self.toml["causal_lm"]
        self.num_layers, self.kv_heads, self.head_dim = cl["num_layers"], cl["num_kv_heads"], cl["head_dim"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(vdir / "model.onnx"), opts,
                                         providers=providers or ["CPUExecutionProvider"])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        from tokenizers import Tokenizer
        self.tokenizer = Tokenizer.from_file(str(vdir / cl["tokenizer"]))
        self.template = (vdir / cl["chat_template"]).read_text() if cl.get("chat_template") else None
        self.stop_ids = {self.tokenizer.token_to_id(t) for t in cl.get("stop_tokens", [])}

    def empty_past(self, batch: int) -> dict:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return {f"past_key_values.{i}.{k}": z for i in range(self.num_layers) for k in ("key", "value")}

    def run(self, input_ids, attention_mask, position_ids, past):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **past}
        outs = self.sess.run(None, feed)
        logits = outs[0]
        present = {}
        for name, val in zip(self.out_names[1:], outs[1:]):
            present["past_key_values." + name[len("present."):]] = val
        return logits, present

    def render_chat(self, messages, add_generation_prompt=True) -> str:
        import jinja2.sandbox
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.template).render(messages=messages, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def generate(self, prompts: list[list[int]], max_new: int, stop: bool = True, on_step=None):
        """Greedy continuation of each prompt (ids), left-padded into one batch.

        Returns (generated ids per prompt, min top-2 logit gap seen). A row that
        produced a stop token stops growing (when ``stop``); the loop ends when
        every row has stopped or ``max_new`` tokens were made.
        """
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = np.zeros((b, width), np.int64)
        mask = np.zeros((b, width), np.int64)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
        logits, past = self.run(ids, mask, pos, self.empty_past(b))
        out = [[] for _ in range(b)]
        done = [False] * b
        min_gap = float("inf")
        next_pos = pos[:, -1] + 1
        for step in range(max_new):
            last = logits[:, -1, :]
            nxt = last.argmax(-1)
            for r in range(b):
                if done[r]:
                    continue
                top2 = np.partition(last[r], -2)[-2:]
                min_gap = min(min_gap, float(top2[1] - top2[0]))
                out[r].append(int(nxt[r]))
                if stop and int(nxt[r]) in self.stop_ids:
                    done[r] = True
            if on_step:
                on_step(step)
            if all(done) or step == max_new - 1:
                break
            mask = np.concatenate([mask, np.ones((b, 1), np.int64)], 1)
            logits, past = self.run(nxt[:, None].astype(np.int64), mask, next_pos[:, None].astype(np.int64), past)
            next_pos = next_pos + 1
        return out, min_gap


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version_dir", type=Path, help="REPO/<model>/<version> folder")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--chat", help="user message, rendered with the chat template")
    ap.add_argument("-n", "--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0 = onnxruntime default)")
    ap.add_argument("--bench", action="store_true", help="time one stream; prints tokens/s")
    ap.add_argument("--json", action="store_true", help="with --bench: print the figures as one JSON line")
    args = ap.parse_args()
    dec = Decoder(args.version_dir, threads=args.threads)
    text = dec.render_chat([{"role": "user", "content": args.chat}]) if args.chat else args.prompt
    ids = dec.encode(text)
    if args.bench:
        dec.generate([ids], 4, stop=False)  # warm-up
        t0 = time.perf_counter()
        first = []
        out, _ = dec.generate([ids], args.max_new, stop=False,
                              on_step=lambda s: first.append(time.perf_counter()) if s == 0 else None)
        t1 = time.perf_counter()
        n = len(out[0])
        decode = (n - 1) / (t1 - first[0]) if n > 1 else 0.0
        if args.json:
            print(json.dumps({"prompt_tokens": len(ids), "new_tokens": n, "threads": args.threads,
                              "prefill_ms": 1000 * (first[0] - t0), "decode_tokens_per_s": decode,
                              "tokens_per_s": n / (t1 - t0)}))
            return 0
        print(f"prompt {len(ids)} tokens, {n} new, threads {args.threads or 'default'}: "
              f"prefill {1000 * (first[0] - t0):.1f} ms, decode {decode:.1f} tokens/s, "
              f"overall {n / (t1 - t0):.1f} tokens/s")
        return 0
    out, gap = dec.generate([ids], args.max_new, stop=bool(args.chat))
    print(dec.tokenizer.decode(out[0], skip_special_tokens=False))
    print(f"[{len(out[0])} tokens, min top-2 gap {gap:.3f}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
