"""Tokenizers: a byte-level BPE trained on the training split (cached), or the model's own tokenizer.json.

The model's vocabulary must hold every token id: a BPE is trained to exactly the model's vocabulary
size (a byte-level BPE needs at least 256), and a given tokenizer larger than the model is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import AeroError, describe
from ..fileio import write_text_atomic

END_OF_TEXT = "<|endoftext|>"
BYTE_ALPHABET = 256
_BPE_VERSION = "bytebpe-v1"  # bump when the recipe changes, so stale caches are not reused


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` tokens (one of them <|endoftext|> when there is room)."""
    if vocab_size < BYTE_ALPHABET:
        raise AeroError(f"a byte-level BPE needs a vocabulary of at least {BYTE_ALPHABET}, the model has {vocab_size}: "
                        f"build it with vocab_size={BYTE_ALPHABET} or more, or give --tokenizer PATH")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = [END_OF_TEXT] if vocab_size > BYTE_ALPHABET else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def cached_bpe(texts: list[str], vocab_size: int, corpus_key: str, cache_dir: Path) -> tuple[Tokenizer, Path]:
    """``train_bpe`` once per (corpus, vocabulary size); later runs read tokenizer.json from the cache."""
    key = hashlib.sha1(f"{_BPE_VERSION}:{corpus_key}:{vocab_size}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    if path.exists():
        return Tokenizer.from_file(str(path)), path
    tokenizer = train_bpe(texts, vocab_size)
    write_text_atomic(path, tokenizer.to_str())
    return tokenizer, path


# Files of a Hugging Face tokenizer saved without tokenizer.json (GPT-2's vocab.json + merges.txt,
# sentencepiece's tokenizer.model): transformers converts them to a fast tokenizer.
HF_TOKENIZER_FILES = ("vocab.json", "tokenizer.model", "spiece.model", "tokenizer_config.json")


def model_tokenizer_path(model_spec: str, cache_dir: Path | None = None) -> Path | None:
    """The tokenizer.json beside a model (a Hugging Face directory, or next to a .pt2), if there is one.

    A Hugging Face directory with only the older files gets them converted once by transformers into a
    tokenizer.json under ``cache_dir`` (when given): the model's own vocabulary, not a new BPE.
    """
    path = Path(str(model_spec))
    candidates = [path / "tokenizer.json"] if path.is_dir() else [path.parent / "tokenizer.json"] if path.is_file() else []
    found = next((c for c in candidates if c.is_file()), None)
    if found is None and cache_dir is not None and path.is_dir() and any((path / f).is_file() for f in HF_TOKENIZER_FILES):
        found = _converted_hf_tokenizer(path, Path(cache_dir))
    return found


def _converted_hf_tokenizer(directory: Path, cache_dir: Path) -> Path:
    """transformers' fast tokenizer of ``directory``, written as tokenizer.json in the cache (keyed by its files)."""
    digest = hashlib.sha1()
    for name in sorted(p.name for p in directory.iterdir() if p.name in HF_TOKENIZER_FILES + ("merges.txt",)):
        digest.update(name.encode() + (directory / name).read_bytes())
    path = cache_dir / "tokenizers" / f"hf-{digest.hexdigest()[:16]}.json"
    if path.exists():
        return path
    try:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(str(directory)).backend_tokenizer
    except Exception as exc:
        raise AeroError(f"cannot read the tokenizer of '{directory}': {describe(exc)}; "
                        "give --tokenizer PATH (a tokenizer.json) or --tokenizer bpe") from None
    write_text_atomic(path, backend.to_str())
    return path


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise AeroError(f"cannot read the tokenizer '{path}': {describe(exc)}") from None


def separator_id(tokenizer: Tokenizer) -> int | None:
    """The id placed between documents: an end-of-text token if the tokenizer has one."""
    for token in (END_OF_TEXT, "</s>", "<eos>", "<|end_of_text|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


def check_fits(tokenizer: Tokenizer, model_vocab: int, model_spec: str) -> None:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > model_vocab:
        raise AeroError(f"the tokenizer has {size} tokens but the model '{model_spec}' only {model_vocab}: "
                        f"give a model with vocab_size={size} (e.g. 'gpt2{{n_layer=4,vocab_size={size}}}') or --tokenizer bpe")


def resolve_tokenizer(choice: str, model_spec: str, model_vocab: int, train_texts: list[str], corpus_key: str,
                      cache_dir: Path) -> tuple[Tokenizer, dict]:
    """The run's tokenizer and a description of it, from ``--tokenizer`` (auto | bpe | PATH).

    auto: the model's own tokenizer when it has one (a tokenizer.json, or a Hugging Face directory's older
    files converted by transformers), else a BPE of the model's vocabulary size.
    """
    own = model_tokenizer_path(model_spec, cache_dir) if choice == "auto" else None
    if choice not in ("auto", "bpe"):
        own = Path(choice)
        if not own.is_file():
            raise AeroError(f"--tokenizer '{choice}' is not a file: give auto, bpe or a tokenizer.json")
    if own is not None:
        tokenizer = load_tokenizer_file(own)
        info = {"kind": "file", "path": str(own)}
    else:
        tokenizer, path = cached_bpe(train_texts, model_vocab, corpus_key, cache_dir)
        info = {"kind": "bpe", "path": str(path)}
    check_fits(tokenizer, model_vocab, model_spec)
    info["vocab_size"] = tokenizer.get_vocab_size(with_added_tokens=True)
    return tokenizer, info
