"""An independent numpy forward pass of a llama GGUF, for checking the ONNX graph.

Written from the dequantized GGUF tensors directly, in float64, without
reading the ONNX file and without the converter's un-permutation: Q/K stay in
GGUF row order and RoPE rotates adjacent pairs (2i, 2i+1) the way llama.cpp
does for this architecture. If the converter's un-permutation + Hugging Face
``rotate_half`` were wrong, the logits would not agree.

No KV cache and no padding: the whole sequence each call (it is the
reference, not the fast path).
"""

from __future__ import annotations

import numpy as np

from .gguf_llama import LlamaGGUF


class NumpyLlama:
    def __init__(self, gg: LlamaGGUF, round_fp16: bool = False):
        """``round_fp16``: round every weight matrix to float16 first, like
        version 1's stored initializers (isolates the graph's own error)."""
        self.c = gg.config
        r = (lambda a: a.astype(np.float16).astype(np.float32)) if round_fp16 else (lambda a: a)
        self.emb = r(gg.tensor("token_embd.weight"))
        self.out = self.emb if gg.tied else gg.tensor("output.weight")
        self.norm = gg.tensor("output_norm.weight")
        self.layers = []
        for i in range(self.c.num_layers):
            self.layers.append({k: (r(gg.layer(i, k)) if k not in ("attn_norm", "ffn_norm") else gg.layer(i, k))
                                for k in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")})

    def _rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.c.rms_eps) * w

    def _rope_pairs(self, x, pos):
        """x [heads, S, d]; llama.cpp NORM rope: rotate (x[2i], x[2i+1]) by pos * theta^(-2i/d)."""
        d = x.shape[-1]
        inv = self.c.rope_theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = pos[:, None].astype(np.float64) * inv[None, :]  # [S, d/2]
        cos, sin = np.cos(ang), np.sin(ang)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """[S, vocab] float64 logits of one unpadded sequence."""
        c = self.c
        s = len(ids)
        pos = np.arange(s)
        h = self.emb[np.asarray(ids)].astype(np.float64)
        causal = np.triu(np.full((s, s), -np.inf), 1)
        for L in self.layers:
            x = self._rms(h, L["attn_norm"])
            q = (x @ L["attn_q"].T.astype(np.float64)).reshape(s, c.num_heads, c.head_dim).transpose(1, 0, 2)
            k = (x @ L["attn_k"].T.astype(np.float64)).reshape(s, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            v = (x @ L["attn_v"].T.astype(np.float64)).reshape(s, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            q, k = self._rope_pairs(q, pos), self._rope_pairs(k, pos)
            k = np.repeat(k, c.group, axis=0)  # query head h uses kv head h // group
            v = np.repeat(v, c.group, axis=0)
            sc = q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim) + causal
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            p = sc / sc.sum(-1, keepdims=True)
            ctx = (p @ v).transpose(1, 0, 2).reshape(s, c.hidden)
            h = h + ctx @ L["attn_output"].T.astype(np.float64)
            x = self._rms(h, L["ffn_norm"])
            gate = x @ L["ffn_gate"].T.astype(np.float64)
            up = x @ L["ffn_up"].T.astype(np.float64)
            h = h + (gate / (1 + np.exp(-gate)) * up) @ L["ffn_down"].T.astype(np.float64)
        return self._rms(h, self.norm) @ self.out.T.astype(np.float64)
