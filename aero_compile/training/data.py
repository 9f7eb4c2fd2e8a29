"""Token streams and batches: the corpus encoded once (cached as .npy), windows drawn by step number.

A training batch is a function of (seed, step, rank) alone, so a resumed run sees exactly the batches
the uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..errors import AeroError
from ..fileio import atomic_path
from .corpus import Corpus
from .tokenizer import separator_id


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """All documents as one int32 id stream, separated by the end-of-text id where the tokenizer has one."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets computed
    separator = separator_id(tokenizer)
    pieces = []
    for encoding in encode(texts):
        pieces.append(np.asarray(encoding.ids, dtype=np.int32))
        if separator is not None:
            pieces.append(np.asarray([separator], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def cached_ids(tokenizer: Tokenizer, texts: list[str], corpus_key: str, split: str, cache_dir: Path) -> np.ndarray:
    """``encode_documents`` once per (tokenizer, corpus, split)."""
    key = hashlib.sha1(tokenizer.to_str().encode() + f":{corpus_key}:{split}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokens" / f"{split}-{key}.npy"
    if path.exists():
        return np.load(path)
    ids = encode_documents(tokenizer, texts)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # np.save on a path would append .npy to the temp name
            np.save(handle, ids)
    return ids


@dataclass
class TokenData:
    """Train and validation id streams (CPU int32 tensors)."""

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int  # tokens the tokenizer can emit

    @classmethod
    def build(cls, corpus: Corpus, tokenizer: Tokenizer, cache_dir: Path) -> "TokenData":
        train = torch.from_numpy(cached_ids(tokenizer, corpus.train, corpus.key, "train", cache_dir))
        val = torch.from_numpy(cached_ids(tokenizer, corpus.val, corpus.key, "val", cache_dir))
        return cls(train=train, val=val, vocab_size=tokenizer.get_vocab_size(with_added_tokens=True))

    def check(self, seq_len: int) -> None:
        if self.train.numel() < seq_len + 2:
            raise AeroError(f"the training split has {self.train.numel()} tokens, fewer than one window of "
                            f"--seq-len {seq_len}: give more text or a shorter --seq-len")
        if self.val.numel() < seq_len + 1:
            raise AeroError(f"the validation split has {self.val.numel()} tokens, fewer than one window of "
                            f"--seq-len {seq_len}: give more text, a larger --val-fraction or a shorter --seq-len")


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    mixed = hashlib.sha1(f"{seed}:{step}:{rank}".encode()).digest()[:8]
    return torch.Generator().manual_seed(int.from_bytes(mixed, "big") & (2**63 - 1))


def train_batch(ids: torch.Tensor, batch_size: int, seq_len: int, *, step: int, seed: int = 0,
                rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both [batch_size, seq_len] int64: random windows chosen by (seed, step, rank)."""
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=_step_generator(seed, step, rank))
    windows = ids[starts[:, None] + torch.arange(seq_len + 1)].long()
    return windows[:, :-1], windows[:, 1:]


def val_batches(ids: torch.Tensor, batch_size: int, seq_len: int, max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows from the start of the validation stream: the same every time."""
    count = min((ids.numel() - 1) // seq_len, batch_size * max_batches)
    starts = torch.arange(count) * seq_len
    windows = ids[starts[:, None] + torch.arange(seq_len + 1)].long()
    return [(chunk[:, :-1], chunk[:, 1:]) for chunk in windows.split(batch_size)]
