#!/usr/bin/env python3
"""A tiny GPT-2-architecture decoder in the Hugging Face Optimum layout, from random weights.

The engine's causal-lm kind must serve any decoder exported by Optimum with
its KV cache, not only the shipped SmolLM2 (llama: RMSNorm, RoPE,
grouped-query attention). This builds a differently shaped one with no
download: GPT-2's learned position embeddings (``wte[input_ids] +
wpe[position_ids]``), pre-LayerNorm with bias, a fused QKV projection with
bias, full multi-head attention (as many KV heads as query heads), the
tanh-approximated GELU MLP, a final LayerNorm and the LM head tied to
``wte``. Weights are numpy random numbers from a fixed seed; the text is
nonsense, but every graph is the same and the engine's answers can be
compared with a plain onnxruntime loop over the same ``model.onnx``.

    python backend-engine/models/tiny_gpt2.py OUT --tokenizer-from REPO/smollm2-135m-instruct/1 \\
        [--prompt TEXT ...] [-n 16]

writes ``OUT/repo/tiny-gpt2/1/`` (``model.onnx``, ``model.toml``, the
``tokenizer.json`` and ``chat_template.jinja`` copied from
``--tokenizer-from``, ``manifest.json``) signed with a fresh key in
``OUT/keys/`` (``models.pub``, ``signing.key``), after checking the graph
against a float64 numpy forward pass of GPT-2. For each ``--prompt`` it
then prints one JSON line on stdout: the prompt's ids and its 16 greedy
tokens from ``loadtest/reference/ort_greedy.py`` (ignoring stop tokens),
their text, and the smallest top-2 logit gap along the way. The engine's
tests (``tests/it/real_models/gpt2.rs``) run it.

Graph (opset 17, standard ops only), names as Optimum exports them:

inputs   input_ids [B,S] int64, attention_mask [B,P+S] int64, position_ids [B,S] int64,
         past_key_values.{i}.key / .value [B, heads, P, head_dim] float32 (P may be 0)
outputs  logits [B,S,vocab] float32, present.{i}.key / .value [B, heads, P+S, head_dim]

A key is masked when its ``attention_mask`` is 0 or it lies after the query,
with -1e9 added before the softmax (exactly zero weight afterwards).
Needs numpy, onnx, onnxruntime, tokenizers, cryptography.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from buildlib import manifest  # noqa: E402

NAME, VERSION = "tiny-gpt2", "1"
SEED = 19
LN_EPS = 1e-5


@dataclass(frozen=True)
class Config:
    """GPT-2 hyperparameters, deliberately unlike SmolLM2-135M's (30 layers, 9/3 heads of 64)."""

    vocab: int = 49152  # the borrowed tokenizer's
    context: int = 512  # n_positions
    layers: int = 2
    heads: int = 4
    head_dim: int = 16

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim


def weights(c: Config, seed: int = SEED) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face's GPT-2 names ([in, out] matrices, as Conv1D keeps them).

    Scaled so the logits spread widely (top-2 gaps far above float32 error)
    and attention and MLP outputs outweigh the token's own embedding (else a
    tied head just repeats the last token).
    """
    rng = np.random.default_rng(seed)
    D = c.hidden

    def normal(std, *shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = {"transformer.wte.weight": normal(0.5, c.vocab, D), "transformer.wpe.weight": normal(0.5, c.context, D)}
    for i in range(c.layers):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"] = 1 + normal(0.1, D)
            w[p + ln + ".bias"] = normal(0.1, D)
        w[p + "attn.c_attn.weight"] = normal(1.5 / np.sqrt(D), D, 3 * D)
        w[p + "attn.c_attn.bias"] = normal(0.1, 3 * D)
        w[p + "attn.c_proj.weight"] = normal(2.0 / np.sqrt(D), D, D)
        w[p + "attn.c_proj.bias"] = normal(0.1, D)
        w[p + "mlp.c_fc.weight"] = normal(1.0 / np.sqrt(D), D, 4 * D)
        w[p + "mlp.c_fc.bias"] = normal(0.1, 4 * D)
        w[p + "mlp.c_proj.weight"] = normal(2.0 / np.sqrt(4 * D), 4 * D, D)
        w[p + "mlp.c_proj.bias"] = normal(0.1, D)
    w["transformer.ln_f.weight"] = 1 + normal(0.1, D)
    w["transformer.ln_f.bias"] = normal(0.1, D)
    return w


def build(c: Config, w: dict[str, np.ndarray]):
    """The ONNX decoder (onnx.ModelProto) with KV cache."""
    from onnx import TensorProto, helper

    from convert.onnx_decoder import IR_VERSION, MASK_VALUE, OPSET, _G, optimum_io

    g = _G()
    for name, value in w.items():
        g.const(name, value)
    D, H, hd = c.hidden, c.heads, c.head_dim
    g.const("scale", np.array(1.0 / np.sqrt(hd), np.float32))
    g.const("mask_value", np.array(MASK_VALUE, np.float32))
    g.const("zero_f", np.array(0.0, np.float32))
    g.const("half", np.array(0.5, np.float32))
    g.const("one_f", np.array(1.0, np.float32))
    g.const("gelu_a", np.array(np.sqrt(2.0 / np.pi), np.float32))
    g.const("gelu_b", np.array(0.044715, np.float32))
    g.const("axis_last", np.array([-1], np.int64))
    g.const("axes_0", np.array([0], np.int64))
    g.const("axes_12", np.array([1, 2], np.int64))
    g.const("one_i", np.array(1, np.int64))
    g.const("zero_i", np.array(0, np.int64))
    g.const("split_qkv", np.array([D, D, D], np.int64))
    g.const("shape_heads", np.array([0, 0, H, hd], np.int64))
    g.const("shape_bsd", np.array([0, 0, D], np.int64))

    def layernorm(x, prefix):
        return g.op("LayerNormalization", [x, prefix + ".weight", prefix + ".bias"], "ln", axis=-1, epsilon=LN_EPS)

    def linear(x, prefix):
        return g.op("Add", [g.op("MatMul", [x, prefix + ".weight"]), prefix + ".bias"], "linear")

    def heads(x):  # [B,S,D] -> [B,H,S,hd]
        return g.op("Transpose", [g.op("Reshape", [x, "shape_heads"])], perm=[0, 2, 1, 3])

    def gelu_new(x):  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [cube, "gelu_b"])]), "gelu_a"])
        return g.op("Mul", [g.op("Mul", [x, "half"]), g.op("Add", [g.op("Tanh", [inner]), "one_f"])], "gelu")

    tok = g.op("Gather", ["transformer.wte.weight", "input_ids"], "wte")
    pos = g.op("Gather", ["transformer.wpe.weight", "position_ids"], "wpe")
    h = g.op("Add", [tok, pos], "embed")

    # Additive mask [B,1,S,T]: key j visible to query i iff j <= P+i and attention_mask[j] == 1.
    t_len = g.op("Gather", [g.op("Shape", ["attention_mask"]), "one_i"], "t_len")
    s_len = g.op("Gather", [g.op("Shape", ["input_ids"]), "one_i"], "s_len")
    kpos = g.op("Range", ["zero_i", t_len, "one_i"], "kpos")
    qpos = g.op("Add", [g.op("Range", ["zero_i", s_len, "one_i"]), g.op("Sub", [t_len, s_len])], "qpos")
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [kpos, "axes_0"]), g.op("Unsqueeze", [qpos, "axis_last"])])
    keep = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), "axes_12"], "keep")
    bias = g.op("Where", [g.op("And", [causal, keep]), "zero_f", "mask_value"], "mask_bias")

    outputs = []
    for i in range(c.layers):
        p = f"transformer.h.{i}"
        qkv = linear(layernorm(h, p + ".ln_1"), p + ".attn.c_attn")
        q, k, v = (heads(t) for t in g.ops("Split", [qkv, "split_qkv"], 3, "qkv", axis=-1))
        pk, pv = f"present.{i}.key", f"present.{i}.value"
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.key", k], [pk], name=pk + "_node", axis=2))
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.value", v], [pv], name=pv + "_node", axis=2))
        outputs += [pk, pv]
        scores = g.op("MatMul", [q, g.op("Transpose", [pk], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, "scale"]), bias], "scores")
        ctx = g.op("MatMul", [g.op("Softmax", [scores], "probs", axis=-1), pv], "ctx")  # [B,H,S,hd]
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), "shape_bsd"])
        h = g.op("Add", [h, linear(ctx, p + ".attn.c_proj")], "resid_attn")
        m = gelu_new(linear(layernorm(h, p + ".ln_2"), p + ".mlp.c_fc"))
        h = g.op("Add", [h, linear(m, p + ".mlp.c_proj")], "resid_mlp")
    h = layernorm(h, "transformer.ln_f")
    lm_head = g.op("Transpose", ["transformer.wte.weight"], "lm_head", perm=[1, 0])  # tied
    g.nodes.append(helper.make_node("MatMul", [h, lm_head], ["logits"], name="lm_head_node"))

    inputs, outs = optimum_io(c.layers, H, hd, c.vocab)
    graph = helper.make_graph(g.nodes, "gpt2_decoder", inputs, outs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="weir-tiny-gpt2")
    model.ir_version = IR_VERSION
    return model


def numpy_forward(c: Config, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """GPT-2 in float64, written from the weights alone: logits [S, vocab] of one unpadded sequence."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    S, H, hd = len(ids), c.heads, c.head_dim

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + LN_EPS) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"] + w[p + ".bias"]

    h = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][np.arange(S)]
    future = np.triu(np.ones((S, S), bool), 1)
    for i in range(c.layers):
        p = f"transformer.h.{i}"
        q, k, v = np.split(lin(ln(h, p + ".ln_1"), p + ".attn.c_attn"), 3, -1)
        q, k, v = (t.reshape(S, H, hd).transpose(1, 0, 2) for t in (q, k, v))
        scores = np.where(future, -np.inf, q @ k.transpose(0, 2, 1) / np.sqrt(hd))
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        h = h + lin((probs @ v).transpose(1, 0, 2).reshape(S, -1), p + ".attn.c_proj")
        x = lin(ln(h, p + ".ln_2"), p + ".mlp.c_fc")
        x = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        h = h + lin(x, p + ".mlp.c_proj")
    return ln(h, "transformer.ln_f") @ w["transformer.wte.weight"].T


def check(c: Config, w: dict[str, np.ndarray], model_path: Path, ids: list[int]) -> float:
    """The graph against ``numpy_forward``: a whole-prompt run, a run on a cached past, and a
    left-padded row. Returns the largest logit difference; raises beyond 1e-3."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    want = numpy_forward(c, w, ids)
    S = len(ids)

    def run(ids_, mask, pos, past):
        feed = {"input_ids": np.array(ids_, np.int64), "attention_mask": np.array(mask, np.int64),
                "position_ids": np.array(pos, np.int64), **past}
        outs = sess.run(None, feed)
        names = [o.name for o in sess.get_outputs()]
        return outs[0], {"past_key_values." + n[len("present."):]: v for n, v in zip(names[1:], outs[1:])}

    def empty(b):
        z = np.zeros((b, c.heads, 0, c.head_dim), np.float32)
        return {f"past_key_values.{i}.{k}": z for i in range(c.layers) for k in ("key", "value")}

    whole, _ = run([ids], [[1] * S], [list(range(S))], empty(1))
    head, past = run([ids[:-1]], [[1] * (S - 1)], [list(range(S - 1))], empty(1))
    step, _ = run([ids[-1:]], [[1] * S], [[S - 1]], past)
    pad = 3  # a row left-padded by 3 beside a longer one
    padded, _ = run([[0] * pad + ids, list(range(100, 100 + S + pad))],
                    [[0] * pad + [1] * S, [1] * (S + pad)],
                    [[0] * pad + list(range(S)), list(range(S + pad))], empty(2))
    diffs = {
        "whole prompt": np.abs(whole[0] - want).max(),
        "cached step": np.abs(step[0, -1] - want[-1]).max(),
        "left-padded row": np.abs(padded[0, pad:] - want).max(),
    }
    bad = {k: float(d) for k, d in diffs.items() if not d < 1e-3}
    if bad:
        raise SystemExit(f"tiny_gpt2: the ONNX graph differs from the numpy GPT-2: {bad}")
    return float(max(diffs.values()))


def load_reference():
    """loadtest/reference/ort_greedy.py as a module."""
    path = HERE.parents[1] / "loadtest" / "reference" / "ort_greedy.py"
    spec = importlib.util.spec_from_file_location("ort_greedy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="writes OUT/repo/tiny-gpt2/1 and OUT/keys")
    ap.add_argument("--tokenizer-from", type=Path, required=True,
                    help="a version folder with tokenizer.json and chat_template.jinja for a 49152-token vocabulary")
    ap.add_argument("--prompt", action="append", default=[], help="print the reference greedy tokens of this prompt")
    ap.add_argument("-n", "--max-new", type=int, default=16)
    args = ap.parse_args()

    import onnx
    from tokenizers import Tokenizer

    from convert import model_toml

    c = Config()
    tok_src = args.tokenizer_from / "tokenizer.json"
    if Tokenizer.from_file(str(tok_src)).get_vocab_size(True) != c.vocab:
        raise SystemExit(f"tiny_gpt2: {tok_src} does not hold {c.vocab} tokens")
    vdir = args.out / "repo" / NAME / VERSION
    vdir.mkdir(parents=True, exist_ok=True)
    w = weights(c)
    onnx.save(build(c, w), str(vdir / "model.onnx"))
    shutil.copyfile(tok_src, vdir / "tokenizer.json")
    shutil.copyfile(args.tokenizer_from / "chat_template.jinja", vdir / "chat_template.jinja")
    (vdir / "model.toml").write_text(model_toml.causal_lm(
        NAME, VERSION, source=f"random weights (numpy seed {SEED}, backend-engine/models/tiny_gpt2.py)",
        note="; GPT-2 architecture", context=c.context, num_layers=c.layers, num_kv_heads=c.heads,
        head_dim=c.head_dim, vocab_size=c.vocab, bos_token="<|im_start|>", eos_token="<|im_end|>",
        stop_tokens=["<|im_end|>", "<|endoftext|>"], max_batch_size=8, kv_cache_mb=64))
    diff = check(c, w, vdir / "model.onnx", list(range(1000, 1013)))
    print(f"tiny_gpt2: graph matches the numpy GPT-2 (max logit diff {diff:.2e})", file=sys.stderr)

    keys = args.out / "keys"
    key = manifest.new_key()
    manifest.write_private(keys / "signing.key", key)
    manifest.write_public(keys / "models.pub", manifest.raw_public(key))
    manifest.sign(vdir, NAME, VERSION, key)
    problems = manifest.verify(vdir, NAME, VERSION, manifest.raw_public(key))
    if problems:
        raise SystemExit("\n".join(problems))

    dec = load_reference().Decoder(vdir, threads=1)
    for prompt in args.prompt:
        ids = dec.encode(prompt)
        out, gap = dec.generate([ids], args.max_new, stop=False)
        print(json.dumps({"prompt": prompt, "prompt_ids": ids, "generated_ids": out[0],
                          "text": dec.tokenizer.decode(out[0], skip_special_tokens=False), "min_top2_gap": gap},
                         ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
