"""Calibration batches for passes that decide from data: which tokens, and what attention looks like.

    tokens = calibration_tokens(gm, count=8, seq_len=64, source="random")
    seen = attention_statistics(gm, tokens)   # per attention softmax: its scores and probabilities

``source`` is ``random`` (uniform token ids from a fixed seed: needs nothing but the model) or
``corpus`` (the Python standard library's validation split, tokenized as ``train`` would: the
tokenizer.json beside the model, else the cached BPE of the model's vocabulary size). The batch is
the model owner's, never a client's: a pass that calibrates reveals nothing about queries.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .blocks import AttentionSite, attention_sites
from .errors import AeroError
from .graph_info import graph_info

SOURCES = ("random", "corpus")


def calibration_tokens(gm: fx.GraphModule, count: int, seq_len: int, source: str = "random",
                       seed: int = 0) -> torch.Tensor:
    """[count, seq_len] token ids for a calibration forward pass."""
    info = graph_info(gm)
    count, seq_len = int(count), int(seq_len)
    if count < 1 or seq_len < 1:
        raise AeroError(f"calibration needs at least one sequence of one token, not {count} x {seq_len}")
    info.check_seq_len(seq_len, "the calibration length", "give a smaller calibration length")
    vocab = info.vocab_size or 2
    generator = torch.Generator().manual_seed(seed)
    if source == "random":
        return torch.randint(0, vocab, (count, seq_len), generator=generator)
    if source == "corpus":
        return _corpus_tokens(info.model or "", vocab, count, seq_len, generator)
    raise AeroError(f"unknown calibration source '{source}': use one of {', '.join(SOURCES)}")


def _corpus_tokens(model_spec: str, vocab: int, count: int, seq_len: int, generator) -> torch.Tensor:
    from .training.config import default_cache_dir
    from .training.corpus import load_corpus
    from .training.data import encode_documents
    from .training.tokenizer import resolve_tokenizer

    corpus = load_corpus(None)
    tokenizer, _ = resolve_tokenizer("auto", model_spec, vocab, corpus.train, corpus.key, default_cache_dir())
    ids = torch.as_tensor(encode_documents(tokenizer, corpus.val), dtype=torch.long)
    if ids.numel() <= seq_len:
        raise AeroError(f"the calibration corpus has {ids.numel()} tokens, fewer than one sequence of {seq_len}")
    starts = torch.randint(0, ids.numel() - seq_len, (count,), generator=generator)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


class _Recorder(fx.Interpreter):
    def __init__(self, gm, wanted: set[fx.Node]):
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, node):
        value = super().run_node(node)
        if node in self.wanted:
            self.values[node] = value.detach()
        return value


def attention_statistics(gm: fx.GraphModule, tokens: torch.Tensor) -> list[tuple[AttentionSite, torch.Tensor, torch.Tensor]]:
    """(site, scores, probabilities) of every attention softmax on ``tokens``, in execution order.

    Scores are the masked softmax inputs [batch, heads, queries, keys]; probabilities its outputs.
    """
    sites = attention_sites(gm)
    wanted = {node for site in sites for node in (site.scores, site.softmax.output)}
    recorder = _Recorder(gm, wanted)
    with torch.no_grad():
        recorder.run(tokens)
    return [(site, recorder.values[site.scores].float(), recorder.values[site.softmax.output].float())
            for site in sites]
