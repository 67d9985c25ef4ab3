"""Build an ONNX decoder with KV cache (Hugging Face Optimum names) from a llama GGUF.

Graph (opset 17, standard ops only, so CPU and CUDA execution providers run it):

inputs   input_ids [B,S] int64, attention_mask [B,P+S] int64, position_ids [B,S] int64,
         past_key_values.{i}.key / .value [B, kv_heads, P, head_dim] float32 (P may be 0)
outputs  logits [B,S,vocab] float32, present.{i}.key / .value [B, kv_heads, P+S, head_dim]

Per layer: RMSNorm -> fused QKV MatMul -> RoPE (Hugging Face ``rotate_half``
form; the GGUF Q/K rows are un-permuted for it) -> concat with the past ->
grouped-query attention (queries reshaped to [B, kv_heads, group, S, d] so K/V
are never repeated) with an additive mask = causal AND attention_mask
(-1e9, finite, so rows that are all padding stay finite) -> output MatMul ->
RMSNorm -> SwiGLU MLP (fused gate/up MatMul).

Weights: ``weights="fp16"`` stores every matrix as a float16 initializer and
casts it to float32 in the graph (onnxruntime folds the casts once at load);
the tied LM head reuses the embedding (Transpose + Cast, also folded).
``weights="fp32"`` stores plain float32 initializers, the input for
onnxruntime's dynamic int8 quantization (the MatMul weights must be
initializers there). The embedding table stays float16 in both (Gather,
then Cast of the rows), and so does a tied LM head, which is therefore never
quantized: int8 logits made the small model's answers visibly worse.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .gguf_llama import LlamaGGUF, unpermute_qk

OPSET = 17
IR_VERSION = 8
MASK_VALUE = -1e9


class _G:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def op(self, op, inputs, hint=None, **attrs):
        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def ops(self, op, inputs, n_out, hint=None, **attrs):
        outs = [self.name(hint or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0] + "_node", **attrs))
        return outs

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name


def build(gg: LlamaGGUF, weights: str = "fp16", producer: str = "weir-convert") -> onnx.ModelProto:
    c = gg.config
    assert weights in ("fp16", "fp32")
    g = _G()
    wdt = np.float16 if weights == "fp16" else np.float32

    def weight(name, w):
        """[in, out] matrix usable by MatMul, float32 in the graph."""
        g.const(name, w.astype(wdt))
        return g.op("Cast", [name], name + "_f32", to=TensorProto.FLOAT) if weights == "fp16" else name

    def rmsnorm(x, w, name):
        g.const(name, w.astype(np.float32))
        ms = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, "eps"])])])
        return g.op("Mul", [g.op("Mul", [x, inv]), name])

    D, H, KV, hd = c.hidden, c.num_heads, c.num_kv_heads, c.head_dim
    g.const("eps", np.array(c.rms_eps, np.float32))
    g.const("scale", np.array(1.0 / np.sqrt(hd), np.float32))
    g.const("mask_value", np.array(MASK_VALUE, np.float32))
    g.const("zero_f", np.array(0.0, np.float32))
    g.const("axis_last", np.array([-1], np.int64))
    g.const("axes_0", np.array([0], np.int64))
    g.const("axes_1", np.array([1], np.int64))
    g.const("axes_2", np.array([2], np.int64))
    g.const("one_i", np.array(1, np.int64))
    g.const("zero_i", np.array(0, np.int64))
    g.const("split_qkv", np.array([D, KV * hd, KV * hd], np.int64))
    g.const("split_gu", np.array([c.ffn, c.ffn], np.int64))
    g.const("half_a", np.array([0], np.int64))
    g.const("half_b", np.array([hd // 2], np.int64))
    g.const("half_e", np.array([hd], np.int64))
    g.const("shape_q", np.array([0, 0, H, hd], np.int64))
    g.const("shape_kv", np.array([0, 0, KV, hd], np.int64))
    g.const("shape_qg", np.array([0, KV, c.group, -1, hd], np.int64))
    g.const("shape_o", np.array([0, H, -1, hd], np.int64))
    g.const("shape_bsd", np.array([0, 0, D], np.int64))
    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    g.const("inv_freq", inv_freq.astype(np.float32))

    # Embedding: Gather on the stored matrix, then cast the gathered rows.
    emb = gg.tensor("token_embd.weight")  # [vocab, D]
    g.const("embed_tokens", emb.astype(np.float16))
    h = g.op("Cast", [g.op("Gather", ["embed_tokens", "input_ids"], "embed")], "embed_f32", to=TensorProto.FLOAT)

    # RoPE tables from position_ids: cos/sin [B,1,S,hd]
    pos = g.op("Cast", ["position_ids"], "pos_f", to=TensorProto.FLOAT)
    freqs = g.op("Mul", [g.op("Unsqueeze", [pos, "axis_last"]), "inv_freq"], "freqs")  # [B,S,hd/2]
    ang = g.op("Concat", [freqs, freqs], "ang", axis=-1)
    cos = g.op("Unsqueeze", [g.op("Cos", [ang]), "axes_1"], "cos")
    sin = g.op("Unsqueeze", [g.op("Sin", [ang]), "axes_1"], "sin")

    def rope(x):
        x1 = g.op("Slice", [x, "half_a", "half_b", "axis_last"])
        x2 = g.op("Slice", [x, "half_b", "half_e", "axis_last"])
        rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])], "roped")

    # Additive mask [B,1,1,S,T]: key j visible to query i iff j <= P+i and mask[j] == 1.
    t_len = g.op("Gather", [g.op("Shape", ["attention_mask"]), "one_i"], "t_len")
    s_len = g.op("Gather", [g.op("Shape", ["input_ids"]), "one_i"], "s_len")
    p_len = g.op("Sub", [t_len, s_len], "p_len")
    kpos = g.op("Range", ["zero_i", t_len, "one_i"], "kpos")  # [T]
    qpos = g.op("Add", [g.op("Range", ["zero_i", s_len, "one_i"]), p_len], "qpos")  # [S]
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [kpos, "axes_0"]), g.op("Unsqueeze", [qpos, "axis_last"])], "causal")  # [S,T]
    keep = g.op("Cast", ["attention_mask"], "keep", to=TensorProto.BOOL)  # [B,T]
    keep = g.op("Unsqueeze", [keep, np_axes(g, "axes_123", [1, 2, 3])], "keep5")  # [B,1,1,1,T]
    allowed = g.op("And", [causal, keep], "allowed")  # [B,1,1,S,T]
    bias = g.op("Where", [allowed, "zero_f", "mask_value"], "mask_bias")

    outputs = []
    for i in range(c.num_layers):
        x = rmsnorm(h, gg.layer(i, "attn_norm"), f"layers.{i}.input_layernorm.weight")
        wq = unpermute_qk(gg.layer(i, "attn_q"), H)
        wk = unpermute_qk(gg.layer(i, "attn_k"), KV)
        wv = gg.layer(i, "attn_v")
        wqkv = weight(f"layers.{i}.attn.qkv_proj.weight", np.concatenate([wq, wk, wv], 0).T)
        q, k, v = g.ops("Split", [g.op("MatMul", [x, wqkv]), "split_qkv"], 3, "qkv", axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, "shape_q"])], perm=[0, 2, 1, 3])  # [B,H,S,d]
        k = g.op("Transpose", [g.op("Reshape", [k, "shape_kv"])], perm=[0, 2, 1, 3])  # [B,KV,S,d]
        v = g.op("Transpose", [g.op("Reshape", [v, "shape_kv"])], perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)
        pk, pv = f"present.{i}.key", f"present.{i}.value"
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.key", k], [pk], name=pk + "_node", axis=2))
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.value", v], [pv], name=pv + "_node", axis=2))
        outputs += [pk, pv]
        qg = g.op("Reshape", [q, "shape_qg"], "qg")  # [B,KV,G,S,d]
        kt = g.op("Unsqueeze", [g.op("Transpose", [pk], perm=[0, 1, 3, 2]), "axes_2"], "kt")  # [B,KV,1,d,T]
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [qg, kt]), "scale"]), bias], "scores")
        probs = g.op("Softmax", [scores], "probs", axis=-1)
        ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [pv, "axes_2"])], "ctx")  # [B,KV,G,S,d]
        ctx = g.op("Transpose", [g.op("Reshape", [ctx, "shape_o"])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, "shape_bsd"])
        wo = weight(f"layers.{i}.attn.o_proj.weight", gg.layer(i, "attn_output").T)
        h = g.op("Add", [h, g.op("MatMul", [ctx, wo])], "resid_attn")

        x = rmsnorm(h, gg.layer(i, "ffn_norm"), f"layers.{i}.post_attention_layernorm.weight")
        wgu = weight(f"layers.{i}.mlp.gate_up_proj.weight",
                     np.concatenate([gg.layer(i, "ffn_gate"), gg.layer(i, "ffn_up")], 0).T)
        gate, up = g.ops("Split", [g.op("MatMul", [x, wgu]), "split_gu"], 2, "gu", axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up], "swiglu")
        wd = weight(f"layers.{i}.mlp.down_proj.weight", gg.layer(i, "ffn_down").T)
        h = g.op("Add", [h, g.op("MatMul", [act, wd])], "resid_mlp")

    h = rmsnorm(h, gg.tensor("output_norm.weight"), "norm.weight")
    if gg.tied:
        lm = g.op("Cast", [g.op("Transpose", ["embed_tokens"], perm=[1, 0])], "lm_head_f32", to=TensorProto.FLOAT)
    else:
        g.const("lm_head.weight", gg.output_weight().T.astype(np.float32))
        lm = "lm_head.weight"
    g.nodes.append(helper.make_node("MatMul", [h, lm], ["logits"], name="lm_head_node"))

    inputs, outs = optimum_io(c.num_layers, c.num_kv_heads, c.head_dim, c.vocab_size)
    graph = helper.make_graph(g.nodes, "decoder", inputs, outs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = IR_VERSION
    return model


def optimum_io(num_layers: int, num_kv_heads: int, head_dim: int, vocab: int):
    """The graph inputs and outputs of a Hugging Face Optimum decoder export
    with KV cache (`text-generation-with-past`): the names and shapes
    weir-engine's causal-lm kind reads."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", vocab])]
    for i in range(num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", f32, ["batch_size", num_kv_heads, "past_sequence_length", head_dim]))
            outs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", f32, ["batch_size", num_kv_heads, "total_sequence_length", head_dim]))
    return inputs, outs


def np_axes(g: _G, name: str, axes) -> str:
    if not any(t.name == name for t in g.inits):
        g.const(name, np.array(axes, np.int64))
    return name
