"""Capture and classification: every family captures, runs like the eager model, and is classified."""

import pytest
import torch

import aero_compile as ac
from aero_compile.capturing import example_input, run_graph
from aero_compile.models import build_builtin
from aero_compile.blocks import ffn_blocks
from aero_compile.ops import OpKind, classify_graph, op_counts

# name -> (norm kind, activation kind, norms, activations, softmaxes)
FAMILIES = {
    "gpt2-tiny": (OpKind.LAYERNORM, OpKind.GELU, 5, 2, 2),
    "hf-gpt2-tiny": (OpKind.LAYERNORM, OpKind.GELU, 5, 2, 2),
    "pythia-tiny": (OpKind.LAYERNORM, OpKind.GELU, 5, 2, 2),
    "llama-tiny": (OpKind.RMSNORM, OpKind.SILU, 5, 2, 2),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_capture_matches_eager_model(name, captured):
    gm = captured(name)
    model = build_builtin(name)
    ids = example_input(gm, seq_len=11, batch=3)  # not the export example's shape: dims are dynamic
    with torch.no_grad():
        expected = model(ids)
    torch.testing.assert_close(run_graph(gm, ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_classifier_finds_norms_activations_softmax(name, captured):
    norm, act, n_norm, n_act, n_softmax = FAMILIES[name]
    counts = op_counts(classify_graph(captured(name)))
    assert counts.get(norm.value) == n_norm
    assert counts.get(act.value) == n_act
    assert counts.get(OpKind.SOFTMAX.value) == n_softmax
    assert counts.get(OpKind.UNKNOWN.value, 0) <= 1  # at most export's guard call, which canonicalize drops


def test_python_written_regions_are_one_op(captured):
    """HF GPT-2's NewGELU (pow/tanh/mul) and Llama's RMSNorm (pow/mean/rsqrt) are single ops."""
    gelus = [op for op in classify_graph(captured("hf-gpt2-tiny")) if op.kind is OpKind.GELU]
    assert len(gelus) == 2 and all(op.is_region and "GELU" in op.module_class for op in gelus)
    norms = [op for op in classify_graph(captured("llama-tiny")) if op.kind is OpKind.RMSNORM]
    assert all(op.is_region and len(op.inputs) == 1 for op in norms)
    assert {op.layer for op in norms} == {0, 1, None}  # two per block, plus the final norm


# GPT-2 small's op counts and elements at T=128: tests/test_core_loader_cli.py, on the report of the default
# command (the same capture of the same model, which this module captured a second time).


def test_ffn_blocks_found_per_layer(captured):
    for name in FAMILIES:
        assert [b.layer for b in ffn_blocks(captured(name))] == [0, 1], name


def test_builtin_seed_gives_same_weights():
    a, b = build_builtin("gpt2-tiny"), build_builtin("gpt2-tiny")
    first, second = a.state_dict(), b.state_dict()
    assert list(first) == list(second) and first  # the same tensors under the same names, none extra
    assert [name for name in first if not torch.equal(first[name], second[name])] == []
    other = build_builtin("gpt2-tiny{n_layer=1}").state_dict()  # the check can tell models apart
    assert set(other) < set(first)


def test_builtin_overrides():
    model = build_builtin("gpt2-tiny{n_layer=3,vocab_size=100}")
    assert len(model.h) == 3 and model.wte.num_embeddings == 100


def test_sdpa_model_captures_and_canonicalizes():
    """A hand-written decoder using F.scaled_dot_product_attention: canonicalize exposes its softmax."""
    gm = ac.capture(SdpaDecoder(), name="sdpa")
    before = op_counts(classify_graph(gm))
    assert before.get("attention") == 2 and "softmax" not in before
    result = ac.PassManager.from_pipeline("canonicalize").run(gm)
    after = result.report.after.op_counts
    assert after.get("softmax") == 2 and "attention" not in after
    assert result.report.passes[0].max_abs_diff < 1e-5


class SdpaDecoder(torch.nn.Module):
    def __init__(self, vocab=64, dim=32, heads=4, layers=2):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.heads = heads
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        B, T, C = x.shape
        for qkv in self.qkv:
            q, k, v = qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + y.transpose(1, 2).reshape(B, T, C)
        return self.head(x)
