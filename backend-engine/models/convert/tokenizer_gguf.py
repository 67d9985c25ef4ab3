"""Rebuild a Hugging Face ``tokenizer.json`` (and the chat template) from GGUF metadata.

Only ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE) is supported. The
pre-tokenizer follows ``tokenizer.ggml.pre`` the way llama.cpp reads it:

- ``smollm``: split every digit on its own (``\\p{N}``), then the GPT-2
  regex: Hugging Face ``Sequence[Digits(individual_digits=True),
  ByteLevel(add_prefix_space=False)]``, which is what SmolLM/SmolLM2 ship.
- ``gpt-2`` / ``default``: plain ``ByteLevel``.

Tokens of GGUF type 3 (control) become added special tokens (not
normalized, never split); ``tokenizer.ggml.add_bos_token`` decides whether a
BOS is prepended (SmolLM2: no).
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .gguf_llama import LlamaGGUF

CONTROL = 3


def build(gg: LlamaGGUF) -> Tokenizer:
    kind = gg.field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise SystemExit(f"tokenizer.ggml.model {kind!r}: only 'gpt2' (byte-level BPE) is supported")
    pre = gg.field("tokenizer.ggml.pre", "default")
    tokens = list(gg.field("tokenizer.ggml.tokens"))
    types = list(gg.field("tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in gg.field("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate tokens in tokenizer.ggml.tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("gpt-2", "gpt2", "default"):
        tok.pre_tokenizer = byte_level
    else:
        raise SystemExit(f"tokenizer.ggml.pre {pre!r} is not supported by this converter")
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL]
    tok.add_special_tokens(specials)
    if gg.field("tokenizer.ggml.add_bos_token", False):
        bos = tokens[int(gg.field("tokenizer.ggml.bos_token_id"))]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, vocab[bos])]),
        ])
    return tok


def token_name(gg: LlamaGGUF, key: str) -> str | None:
    f = gg.reader.fields.get(f"tokenizer.ggml.{key}_token_id")
    if f is None:
        return None
    return gg.field("tokenizer.ggml.tokens")[int(f.contents())]


def chat_template(gg: LlamaGGUF) -> str | None:
    f = gg.reader.fields.get("tokenizer.chat_template")
    return None if f is None else f.contents()
