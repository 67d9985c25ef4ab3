"""The training corpus and the byte windows the language model sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = 256  # output classes: the 256 byte values
PAD = 256  # input-only id used for left padding
VOCAB_IN = VOCAB + 1  # rows of the embedding table


def load_documents(corpus_dir: Path) -> list[tuple[str, bytes]]:
    """Every ``*.txt`` in ``corpus_dir`` (not README.md), sorted by name."""
    docs = []
    for path in sorted(corpus_dir.glob("*.txt")):
        data = path.read_bytes()
        data.decode("utf-8")  # refuse a corpus file that is not UTF-8
        docs.append((path.name, data))
    if not docs:
        raise SystemExit(f"no *.txt corpus files in {corpus_dir}")
    return docs


def window(ids: list[int], context: int) -> list[int]:
    """The model input for a byte sequence: its last ``context`` ids,
    left-padded with PAD when the sequence is shorter."""
    tail = list(ids[-context:]) if context else []
    return [PAD] * (context - len(tail)) + tail


def training_pairs(docs: list[tuple[str, bytes]], context: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (window, next byte) pair of every document.

    Each document starts from an all-PAD window, so a prompt shorter than
    the context looks like the start of a text.
    """
    xs, ys = [], []
    for _, data in docs:
        arr = np.frombuffer(data, dtype=np.uint8).astype(np.int16)
        padded = np.concatenate([np.full(context, PAD, dtype=np.int16), arr])
        idx = np.arange(len(arr))[:, None] + np.arange(context)[None, :]
        xs.append(padded[idx])
        ys.append(arr)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)
