"""Read a llama-architecture GGUF file: hyper-parameters and dequantized weights.

Weights come back as float32 numpy arrays in PyTorch layout ``[out, in]``
(``gguf`` reverses GGUF's dimension order), still in GGUF's row order: the
Q and K projections are permuted for llama.cpp's RoPE, which rotates
*adjacent* pairs (0,1), (2,3), ... of each head. ``unpermute_qk`` undoes that
permutation, giving Hugging Face's order, whose RoPE (``rotate_half``) pairs
dimension i with i + head_dim/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


@dataclass(frozen=True)
class LlamaConfig:
    num_layers: int
    hidden: int
    ffn: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context: int
    rms_eps: float
    rope_theta: float

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads


class LlamaGGUF:
    """One GGUF file, opened lazily (memory-mapped by ``gguf``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.reader = GGUFReader(str(self.path))
        self._tensors = {t.name: t for t in self.reader.tensors}
        arch = self.field("general.architecture")
        if arch != "llama":
            raise SystemExit(f"{path}: architecture {arch!r}, only 'llama' is supported")
        f = lambda k: self.field(f"llama.{k}")  # noqa: E731
        hidden = int(f("embedding_length"))
        heads = int(f("attention.head_count"))
        head_dim = int(self.field("llama.rope.dimension_count", hidden // heads))
        vocab = int(self.field("llama.vocab_size", len(self.field("tokenizer.ggml.tokens"))))
        self.config = LlamaConfig(
            num_layers=int(f("block_count")),
            hidden=hidden,
            ffn=int(f("feed_forward_length")),
            num_heads=heads,
            num_kv_heads=int(f("attention.head_count_kv")),
            head_dim=head_dim,
            vocab_size=vocab,
            context=int(f("context_length")),
            rms_eps=float(f("attention.layer_norm_rms_epsilon")),
            rope_theta=float(self.field("llama.rope.freq_base", 10000.0)),
        )
        if head_dim * heads != hidden:
            raise SystemExit(f"{path}: head_dim {head_dim} x heads {heads} != hidden {hidden}")

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                raise KeyError(key)
            return default
        return f.contents()

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor(self, name: str) -> np.ndarray:
        """Dequantized float32 tensor, PyTorch layout, GGUF row order."""
        t = self._tensors[name]
        a = dequantize(t.data, t.tensor_type)
        return np.ascontiguousarray(a, dtype=np.float32)

    def layer(self, i: int, part: str) -> np.ndarray:
        return self.tensor(f"blk.{i}.{part}.weight")

    def output_weight(self) -> np.ndarray:
        """The LM head [vocab, hidden]; the embedding when the weights are tied."""
        return self.tensor("output.weight" if self.has("output.weight") else "token_embd.weight")

    @property
    def tied(self) -> bool:
        return not self.has("output.weight")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf ``permute`` for Q/K weights [out, in].

    GGUF row 2*i (+1) of a head is Hugging Face row i (i + head_dim/2).
    """
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)
