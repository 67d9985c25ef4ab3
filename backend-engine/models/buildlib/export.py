"""ONNX graphs and model.toml files for the shipped models.

Serialisation is deterministic: fixed names, no timestamps, explicit IR and
opset versions, initializers in a fixed order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .corpus import PAD, VOCAB

OPSET = 17
IR_VERSION = 8
PRODUCER = "weir-models-build"

MAX_BATCH_SIZE = 32
MAX_QUEUE_DELAY_MS = 2


def _model(graph: onnx.GraphProto, meta: dict[str, str]) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version="1",
    )
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def mlp_onnx(w: dict[str, np.ndarray], version: str) -> bytes:
    """INPUT0 [batch, 16] -> Gemm -> Relu -> Gemm -> Softmax -> OUTPUT0 [batch, 4]."""
    n_in = w["fc1.weight"].shape[0]
    n_out = w["fc2.weight"].shape[1]
    nodes = [
        helper.make_node("Gemm", ["INPUT0", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1"),
        helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["fc2"], name="fc2"),
        helper.make_node("Softmax", ["fc2"], ["OUTPUT0"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[_init(k, w[k]) for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")],
    )
    return _model(graph, {"weir.model": "mlp", "weir.version": version})


def lm_onnx(p: dict[str, np.ndarray], names: list[str], context: int, version: str) -> bytes:
    """input_ids INT64 [batch, C] -> Gather -> Flatten -> (Gemm, Tanh)* -> Gemm -> logits."""
    n_hidden = (len(names) - 3) // 2
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"], name="embed", axis=0),
        helper.make_node("Flatten", ["embedded"], ["window"], name="flatten", axis=1),
    ]
    x = "window"
    for i in range(n_hidden):
        nodes.append(helper.make_node("Gemm", [x, f"dense{i}.weight", f"dense{i}.bias"], [f"dense{i}"], name=f"dense{i}"))
        nodes.append(helper.make_node("Tanh", [f"dense{i}"], [f"hidden{i}"], name=f"tanh{i}"))
        x = f"hidden{i}"
    nodes.append(helper.make_node("Gemm", [x, "out.weight", "out.bias"], ["logits"], name="out"))
    graph = helper.make_graph(
        nodes,
        "tiny-lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", context])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", VOCAB])],
        initializer=[_init(k, p[k]) for k in names],
    )
    meta = {
        "weir.model": "tiny-lm",
        "weir.version": version,
        "weir.lm.context": str(context),
        "weir.lm.pad_id": str(PAD),
    }
    return _model(graph, meta)


def _io_toml(table: str, name: str, datatype: str, shape: list[int]) -> list[str]:
    return [
        f"[[{table}]]",
        f'name = "{name}"',
        f'datatype = "{datatype}"',
        f"shape = [{', '.join(str(d) for d in shape)}]",
        "",
    ]


def model_toml(
    name: str,
    version: str,
    kind: str,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    lm_context: int | None = None,
) -> bytes:
    lines = [
        "# Written by backend-engine/models/build.py; signed by manifest.json.",
        f'name = "{name}"',
        f'version = "{version}"',
        f'kind = "{kind}"',
        f"max_batch_size = {MAX_BATCH_SIZE}",
        f"max_queue_delay_ms = {MAX_QUEUE_DELAY_MS}",
        "",
    ]
    for io in inputs:
        lines += _io_toml("inputs", *io)
    for io in outputs:
        lines += _io_toml("outputs", *io)
    if lm_context is not None:
        lines += ["[lm]", f"context = {lm_context}", f"vocab_size = {VOCAB}", f"pad_id = {PAD}", ""]
    return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8")
