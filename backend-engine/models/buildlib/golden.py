"""Golden outputs for the engine's tests.

They come from an independent float64 numpy forward pass over the weights
read back from each exported model.onnx (not from the training code), and
are cross-checked against the onnxruntime Python package when it is
installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .corpus import PAD, VOCAB, window

GREEDY_STEPS = 48
LOGITS_ATOL = 1e-3
MLP_ATOL = 1e-5

WINDOW_RULE = (
    "Encode the prompt as UTF-8 bytes. Before each step the model input is the last "
    "`context` ids of (prompt bytes + bytes generated so far); when there are fewer, "
    "left-pad with pad_id (256) up to `context`. The next byte is the argmax of the "
    "256 logits (lowest index on a tie). Append it and repeat. An empty prompt is an "
    "all-pad window."
)

GAP_NOTE = (
    "min_top2_gap: the smallest gap between the two largest logits over a case's steps "
    "(float64 reference); a float32 runtime reproduces the greedy ids while its logit "
    "error stays well below it."
)

LM_PROMPTS = [
    "道可道，",
    "上善若水。",
    "床前明月光，",
    "子曰：学而",
    "When in the Course of ",
    "The Fox and the ",
    "Shall I compare thee",
    "Four score and",
]
LOGITS_PROMPT = "上善若水。"


def initializers(model_bytes: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_from_string(model_bytes)
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


class LmReference:
    """float64 forward pass of a tiny-lm model.onnx."""

    def __init__(self, model_bytes: bytes, context: int):
        self.w = initializers(model_bytes)
        self.context = context
        self.layers = sum(1 for k in self.w if k.startswith("dense") and k.endswith(".weight"))

    def logits(self, windows: np.ndarray) -> np.ndarray:
        h = self.w["embedding"][windows].reshape(windows.shape[0], -1)
        for i in range(self.layers):
            h = np.tanh(h @ self.w[f"dense{i}.weight"] + self.w[f"dense{i}.bias"])
        return h @ self.w["out.weight"] + self.w["out.bias"]

    def greedy(self, prompt: bytes, steps: int) -> tuple[list[int], list[list[int]], float]:
        """Generated ids, the window of every step, and the smallest top-2 gap."""
        ids, windows, margin = list(prompt), [], float("inf")
        for _ in range(steps):
            win = window(ids, self.context)
            row = self.logits(np.array([win], dtype=np.int64))[0]
            top2 = np.sort(row)[-2:]
            margin = min(margin, float(top2[1] - top2[0]))
            windows.append(win)
            ids.append(int(np.argmax(row)))
        return ids[len(prompt) :], windows, margin


def mlp_reference(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    w = initializers(model_bytes)
    h = np.maximum(x.astype(np.float64) @ w["fc1.weight"] + w["fc1.bias"], 0.0)
    z = h @ w["fc2.weight"] + w["fc2.bias"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def f32(values) -> list:
    """Round to float32 and keep the shortest decimal that reads back as it."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 0:
        return float(str(arr[()]))
    return [f32(v) for v in arr]


def mlp_cases() -> list[tuple[str, np.ndarray]]:
    """Fixed inputs: exact binary fractions, so the JSON is exact."""
    rng = np.random.default_rng(16)
    ramp = (np.arange(48, dtype=np.float32).reshape(3, 16) - 24.0) / 16.0
    rand = np.round(rng.standard_normal((5, 16)) * 8.0) / 8.0
    return [
        ("zeros", np.zeros((1, 16), dtype=np.float32)),
        ("ones", np.ones((1, 16), dtype=np.float32)),
        ("ramp", ramp.astype(np.float32)),
        ("random", rand.astype(np.float32)),
    ]


def mlp_golden(model_bytes: bytes, version: str) -> dict:
    cases = []
    for name, x in mlp_cases():
        cases.append({"name": name, "shape": list(x.shape), "input": f32(x), "output": f32(mlp_reference(model_bytes, x))})
    return {
        "model": "mlp",
        "version": version,
        "input": {"name": "INPUT0", "datatype": "FP32"},
        "output": {"name": "OUTPUT0", "datatype": "FP32"},
        "atol": MLP_ATOL,
        "note": "output = softmax(relu(input @ fc1.weight + fc1.bias) @ fc2.weight + fc2.bias), float64 reference rounded to float32",
        "cases": cases,
    }


def lm_golden(model_bytes: bytes, version: str, context: int) -> tuple[dict, float]:
    ref = LmReference(model_bytes, context)
    greedy, margins = [], []
    for prompt in LM_PROMPTS:
        ids, _, margin = ref.greedy(prompt.encode("utf-8"), GREEDY_STEPS)
        margins.append(margin)
        greedy.append(
            {
                "prompt": prompt,
                "prompt_ids": list(prompt.encode("utf-8")),
                "generated_ids": ids,
                "generated_text": bytes(ids).decode("utf-8", errors="replace"),
                "min_top2_gap": float(f"{margin:.2g}"),
            }
        )
    first = np.array([window(list(p.encode("utf-8")), context) for p in LM_PROMPTS], dtype=np.int64)
    first_logits = ref.logits(first)
    lp = LM_PROMPTS.index(LOGITS_PROMPT)
    doc = {
        "model": "tiny-lm",
        "version": version,
        "input": {"name": "input_ids", "datatype": "INT64"},
        "output": {"name": "logits", "datatype": "FP32"},
        "context": context,
        "vocab_size": VOCAB,
        "pad_id": PAD,
        "window_rule": WINDOW_RULE,
        "gap_note": GAP_NOTE,
        "steps": GREEDY_STEPS,
        "logits_atol": LOGITS_ATOL,
        "greedy": greedy,
        "first_step_batch": {
            "note": "one batch holding the first-step window of every greedy prompt, in order",
            "input_ids": first.tolist(),
            "argmax": [int(i) for i in np.argmax(first_logits, axis=1)],
        },
        "first_step_logits": {
            "prompt": LOGITS_PROMPT,
            "input_ids": first[lp].tolist(),
            "logits": f32(first_logits[lp]),
        },
    }
    return doc, min(margins)


def cross_check_lm(model_bytes: bytes, doc: dict, log=sys.stderr) -> list[str]:
    """Re-run the golden through onnxruntime (float32); problems found."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("  onnxruntime not installed: cross-check skipped", file=log)
        return []
    sess = _session(ort, model_bytes)
    context, problems, worst = doc["context"], [], 0.0
    for case in doc["greedy"]:
        ids = list(case["prompt_ids"])
        for _ in range(doc["steps"]):
            row = sess.run(["logits"], {"input_ids": np.array([window(ids, context)], dtype=np.int64)})[0][0]
            ids.append(int(np.argmax(row)))
        if ids[len(case["prompt_ids"]) :] != case["generated_ids"]:
            problems.append(f"tiny-lm v{doc['version']}: onnxruntime greedy differs for {case['prompt']!r}")
    batch = doc["first_step_batch"]
    out = sess.run(["logits"], {"input_ids": np.array(batch["input_ids"], dtype=np.int64)})[0]
    if [int(i) for i in np.argmax(out, axis=1)] != batch["argmax"]:
        problems.append(f"tiny-lm v{doc['version']}: onnxruntime batch argmax differs")
    fl = doc["first_step_logits"]
    row = sess.run(["logits"], {"input_ids": np.array([fl["input_ids"]], dtype=np.int64)})[0][0]
    worst = float(np.max(np.abs(row - np.array(fl["logits"]))))
    if worst > doc["logits_atol"]:
        problems.append(f"tiny-lm v{doc['version']}: onnxruntime logits off by {worst:g}")
    if not problems:
        print(f"  tiny-lm v{doc['version']}: onnxruntime agrees (max logit diff {worst:.2e})", file=log)
    return problems


def cross_check_mlp(model_bytes: bytes, doc: dict, log=sys.stderr) -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    sess = _session(ort, model_bytes)
    worst = 0.0
    for case in doc["cases"]:
        out = sess.run(["OUTPUT0"], {"INPUT0": np.array(case["input"], dtype=np.float32)})[0]
        worst = max(worst, float(np.max(np.abs(out - np.array(case["output"])))))
    if worst > doc["atol"]:
        return [f"mlp: onnxruntime output off by {worst:g}"]
    print(f"  mlp: onnxruntime agrees (max diff {worst:.2e})", file=log)
    return []


def _session(ort, model_bytes: bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def dumps(doc) -> str:
    """JSON with two-space indentation but number lists kept on one line."""
    return _dump(doc, 0) + "\n"


def _dump(value, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        return "[\n" + ",\n".join(inner + _dump(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(doc), encoding="utf-8")
