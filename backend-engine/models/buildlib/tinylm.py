"""The byte-level language model: parameters, forward/backward and Adam,
in plain float32 numpy.

Architecture: ``input_ids [B, C]`` -> embedding ``[257, E]`` -> concatenate
to ``[B, C*E]`` -> one or more ``tanh`` dense layers -> ``logits [B, 256]``.
Parameter names are the ONNX initializer names (see export.py).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from .corpus import PAD, VOCAB, VOCAB_IN, training_pairs, window

F32 = np.float32


@dataclass(frozen=True)
class LmConfig:
    """One tiny-lm version's size and training schedule."""

    version: str
    context: int
    embed: int
    hidden: tuple[int, ...]
    steps: int
    batch: int
    lr: float
    seed: int
    # Share of training windows cut down to a random shorter prompt
    # (left-padded), so mid-text prompts shorter than the context work.
    short_prob: float = 0.25
    warmup: int = 100
    clip: float = 5.0


def param_names(cfg: LmConfig) -> list[str]:
    names = ["embedding"]
    for i in range(len(cfg.hidden)):
        names += [f"dense{i}.weight", f"dense{i}.bias"]
    return names + ["out.weight", "out.bias"]


def init_params(cfg: LmConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    p = {"embedding": rng.standard_normal((VOCAB_IN, cfg.embed), dtype=F32)}
    fan_in = cfg.context * cfg.embed
    for i, width in enumerate(cfg.hidden):
        p[f"dense{i}.weight"] = rng.standard_normal((fan_in, width), dtype=F32) * F32(1.0 / math.sqrt(fan_in))
        p[f"dense{i}.bias"] = np.zeros(width, dtype=F32)
        fan_in = width
    p["out.weight"] = rng.standard_normal((fan_in, VOCAB), dtype=F32) * F32(0.5 / math.sqrt(fan_in))
    p["out.bias"] = np.zeros(VOCAB, dtype=F32)
    return p


def forward(p: dict[str, np.ndarray], x: np.ndarray, n_hidden: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits for windows ``x`` plus the activations backward needs."""
    h = p["embedding"][x].reshape(x.shape[0], -1)
    acts = [h]
    for i in range(n_hidden):
        h = np.tanh(h @ p[f"dense{i}.weight"] + p[f"dense{i}.bias"])
        acts.append(h)
    return h @ p["out.weight"] + p["out.bias"], acts


def loss_and_grads(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, n_hidden: int) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of the next byte and its gradients."""
    b = x.shape[0]
    logits, acts = forward(p, x, n_hidden)
    z = logits - logits.max(axis=1, keepdims=True)
    ez = np.exp(z)
    s = ez.sum(axis=1, keepdims=True)
    rows = np.arange(b)
    loss = float(-(z[rows, y] - np.log(s[:, 0])).mean())
    d = ez / s
    d[rows, y] -= F32(1.0)
    d *= F32(1.0 / b)
    g = {"out.weight": acts[-1].T @ d, "out.bias": d.sum(axis=0)}
    dh = d @ p["out.weight"].T
    for i in reversed(range(n_hidden)):
        h = acts[i + 1]
        dpre = dh * (F32(1.0) - h * h)
        g[f"dense{i}.weight"] = acts[i].T @ dpre
        g[f"dense{i}.bias"] = dpre.sum(axis=0)
        dh = dpre @ p[f"dense{i}.weight"].T
    emb = p["embedding"]
    ge = np.zeros_like(emb)
    np.add.at(ge, x.reshape(-1), dh.reshape(-1, emb.shape[1]))
    g["embedding"] = ge
    return loss, g


def _lr_at(cfg: LmConfig, step: int) -> float:
    """Linear warm-up, then linear decay to 5%. Plain arithmetic only: libm
    functions (cos, pow) may round differently across C libraries."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (1.0 - 0.95 * t)


def _shorten(x: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """Pad the front of a random share of windows, keeping 1..C bytes."""
    b, c = x.shape
    cut = rng.random(b) < prob
    keep = rng.integers(1, c + 1, size=b)
    mask = cut[:, None] & (np.arange(c)[None, :] < (c - keep)[:, None])
    return np.where(mask, np.int16(PAD), x)


def train(cfg: LmConfig, docs: list[tuple[str, bytes]], log=sys.stderr) -> tuple[dict[str, np.ndarray], dict]:
    """Train with Adam; returns the parameters and a small training record."""
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    xs, ys = training_pairs(docs, cfg.context)
    p = init_params(cfg, rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    b1t, b2t = 1.0, 1.0  # b1**t and b2**t, by repeated multiplication
    n = len(ys)
    order = rng.permutation(n)
    pos = 0
    ema = None
    n_hidden = len(cfg.hidden)
    for step in range(cfg.steps):
        if pos + cfg.batch > n:
            order = rng.permutation(n)
            pos = 0
        idx = order[pos : pos + cfg.batch]
        pos += cfg.batch
        x = _shorten(xs[idx], rng, cfg.short_prob).astype(np.int64)
        loss, g = loss_and_grads(p, x, ys[idx], n_hidden)
        norm = math.sqrt(sum(float(np.vdot(gv, gv)) for gv in g.values()))
        scale = F32(min(1.0, cfg.clip / (norm + 1e-6)))
        b1t, b2t = b1t * b1, b2t * b2
        c1 = F32(_lr_at(cfg, step) / (1.0 - b1t))
        c2 = F32(1.0 / (1.0 - b2t))
        for k in p:
            gk = g[k] * scale
            m[k] = F32(b1) * m[k] + F32(1 - b1) * gk
            v[k] = F32(b2) * v[k] + F32(1 - b2) * (gk * gk)
            p[k] -= c1 * m[k] / (np.sqrt(v[k] * c2) + F32(eps))
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if (step + 1) % 500 == 0 or step + 1 == cfg.steps:
            print(f"  tiny-lm v{cfg.version}: step {step + 1}/{cfg.steps} loss {ema:.3f}", file=log, flush=True)
    record = {
        "steps": cfg.steps,
        "examples": int(n),
        "final_loss_ema": round(float(ema), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return p, record


def greedy(p: dict[str, np.ndarray], cfg: LmConfig, prompt: bytes, steps: int) -> bytes:
    """Greedy continuation with the float32 training weights (for logs)."""
    ids = list(prompt)
    for _ in range(steps):
        logits, _ = forward(p, np.array([window(ids, cfg.context)], dtype=np.int64), len(cfg.hidden))
        ids.append(int(np.argmax(logits[0])))
    return bytes(ids[len(prompt) :])
