"""The sentence-embedding model: an ONNX BERT encoder plus its WordPiece tokenizer.

``fix_tokenizer`` removes the fixed padding (to 128) that the packaged
``tokenizer.json`` has baked in and sets truncation to the model's
``max_seq_length`` (sentence-transformers' 256), so one sentence encodes to
exactly its own tokens and the server pads batches itself.
"""

from __future__ import annotations

import json


def fix_tokenizer(raw: bytes, max_tokens: int) -> bytes:
    t = json.loads(raw)
    t["padding"] = None
    t["truncation"] = {"direction": "Right", "max_length": max_tokens, "strategy": "LongestFirst", "stride": 0}
    return (json.dumps(t, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def pooling_mode(cfg: dict) -> str:
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    raise SystemExit(f"unsupported pooling config {cfg}")
