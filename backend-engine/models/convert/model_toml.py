"""model.toml text for the causal-lm and embedding kinds (docs/model-repository.md)."""

from __future__ import annotations


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def causal_lm(name: str, version: str, *, source: str, context: int, num_layers: int, num_kv_heads: int,
              head_dim: int, vocab_size: int, bos_token: str | None, eos_token: str, stop_tokens: list[str],
              max_batch_size: int = 16, kv_cache_mb: int = 512, chat_template: str | None = "chat_template.jinja",
              note: str = "") -> str:
    lines = [
        f"# {name} {version}: decoder with KV cache (Optimum names), converted from {source}{note}",
        f"name = {_q(name)}",
        f"version = {_q(version)}",
        'kind = "causal-lm"',
        f"max_batch_size = {max_batch_size}",
        "[causal_lm]",
        'tokenizer = "tokenizer.json"',
    ]
    if chat_template:
        lines.append(f"chat_template = {_q(chat_template)}")
    lines += [
        f"context = {context}",
        f"num_layers = {num_layers}",
        f"num_kv_heads = {num_kv_heads}",
        f"head_dim = {head_dim}",
        f"vocab_size = {vocab_size}",
    ]
    if bos_token is not None:
        lines.append(f"bos_token = {_q(bos_token)}")
    lines += [
        f"eos_token = {_q(eos_token)}",
        "stop_tokens = [" + ", ".join(_q(t) for t in stop_tokens) + "]",
        f"kv_cache_mb = {kv_cache_mb}",
    ]
    return "\n".join(lines) + "\n"


def embedding(name: str, version: str, *, source: str, pooling: str, normalize: bool, dimensions: int,
              max_tokens: int, max_batch_size: int = 32) -> str:
    return "\n".join([
        f"# {name} {version}: sentence embeddings ({pooling} pooling), from {source}",
        f"name = {_q(name)}",
        f"version = {_q(version)}",
        'kind = "embedding"',
        f"max_batch_size = {max_batch_size}",
        "[embedding]",
        'tokenizer = "tokenizer.json"',
        f"pooling = {_q(pooling)}",
        f"normalize = {'true' if normalize else 'false'}",
        f"dimensions = {dimensions}",
        f"max_tokens = {max_tokens}",
    ]) + "\n"
