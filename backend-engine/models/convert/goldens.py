"""Write golden/<model>-<version>.json from a converted repository (``python -m convert goldens``).

Everything comes from onnxruntime (Python, CPU, float32) running the plain
greedy KV-cache loop of loadtest/reference/ort_greedy.py, and the embedding
loop of loadtest/reference/ort_embed.py. ``model_sha256`` says which
model.onnx a golden belongs to; the engine's tests should skip (not fail)
when the local conversion produced different bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from .checks import _load

PLAIN_PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TEMPLATE_CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Hi! Who are you?"},
    {"role": "assistant", "content": "I am a small language model."},
    {"role": "user", "content": "Name three primary colors."},
]
TOKENIZE = [
    "Hello, world! It's 2024.",
    "def add(a, b):\n    return a + b\n",
    "道可道，非常道。",
    "<|im_start|>user\nHi<|im_end|>\n",
]
SENTENCES = [
    "A man is playing a guitar.",
    "A person plays the guitar.",
    "The stock market fell sharply today.",
    "Weir balances requests across model servers.",
]
PAIRS = [[0, 1], [0, 2], [1, 2], [2, 3]]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"goldens: wrote {path}", file=sys.stderr)


def llm(vdir: Path) -> dict:
    import onnxruntime
    dec = _load("ort_greedy").Decoder(vdir, threads=1)
    plain_ids = dec.encode(PLAIN_PROMPT)
    plain, plain_gap = dec.generate([plain_ids], 32, stop=False)
    chat_text = dec.render_chat(CHAT)
    chat_ids = dec.encode(chat_text)
    chat, chat_gap = dec.generate([chat_ids], 64, stop=True)
    return {
        "model": vdir.parent.name,
        "version": vdir.name,
        "model_sha256": _sha(vdir / "model.onnx"),
        "produced_by": f"loadtest/reference/ort_greedy.py, onnxruntime {onnxruntime.__version__} CPU, "
                       "float32, 1 thread, greedy (argmax, lowest id on ties)",
        "position_rule": "left padding; position_ids = max(cumsum(attention_mask) - 1, 0); "
                         "empty past is [B, num_kv_heads, 0, head_dim]",
        "greedy": {
            "prompt": PLAIN_PROMPT,
            "prompt_ids": plain_ids,
            "max_new_tokens": 32,
            "generated_ids": plain[0],
            "generated_text": dec.tokenizer.decode(plain[0], skip_special_tokens=False),
            "min_top2_gap": round(plain_gap, 6),
        },
        "chat": {
            "messages": CHAT,
            "add_generation_prompt": True,
            "prompt_text": chat_text,
            "prompt_ids": chat_ids,
            "max_new_tokens": 64,
            "stop_tokens": sorted(dec.tokenizer.id_to_token(i) for i in dec.stop_ids),
            "generated_ids": chat[0],
            "answer_text": dec.tokenizer.decode(chat[0], skip_special_tokens=True),
            "min_top2_gap": round(chat_gap, 6),
        },
        "chat_template": {
            "messages": TEMPLATE_CONVERSATION,
            "add_generation_prompt": True,
            "rendered": dec.render_chat(TEMPLATE_CONVERSATION),
        },
        "tokenize": [{"text": t, "ids": dec.encode(t)} for t in TOKENIZE],
    }


def embedding(vdir: Path) -> dict:
    import onnxruntime
    emb = _load("ort_embed").Embedder(vdir, threads=1)
    vecs = emb.embed(SENTENCES)
    ids = emb.tokenize(SENTENCES)
    return {
        "model": vdir.parent.name,
        "version": vdir.name,
        "model_sha256": _sha(vdir / "model.onnx"),
        "produced_by": f"loadtest/reference/ort_embed.py, onnxruntime {onnxruntime.__version__} CPU, float32, "
                       "one batch padded to its longest sentence, token_type_ids = 0, "
                       "mean pooling over attention_mask, L2-normalised",
        "atol": 1e-4,
        "sentences": [{"text": s, "ids": i, "first8": [round(float(x), 6) for x in v[:8]]}
                      for s, i, v in zip(SENTENCES, ids, vecs)],
        "pairs": [{"a": a, "b": b, "cosine": round(float(vecs[a] @ vecs[b]), 6)} for a, b in PAIRS],
    }


def main(args) -> int:
    from .__main__ import EMB, LLM
    args.out.mkdir(parents=True, exist_ok=True)
    for version in ("1", "2"):
        _write(args.out / f"{LLM}-{version}.json", llm(args.repo / LLM / version))
    _write(args.out / f"{EMB}-1.json", embedding(args.repo / EMB / "1"))
    return 0
