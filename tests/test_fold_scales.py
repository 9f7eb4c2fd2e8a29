"""fold-scales: scale-ffn's products with alpha and beta move into the weights, the logits unchanged."""

import pytest
import torch

import aero_compile as ac
from aero_compile.cost.analyzer import analyze
from aero_compile.secrecy import Secrecy, propagate_secrecy
from aero_compile.ops import target_name


def _scalar_products(gm) -> int:
    """Products of a secret tensor with a parameter-derived scalar (what fold-scales removes)."""
    levels = propagate_secrecy(gm)
    return sum(1 for node in gm.graph.nodes if target_name(node) in ("mul", "div")
               and any(levels.get(a) is Secrecy.SECRET for a in node.all_input_nodes)
               and any(levels.get(a) is Secrecy.OWNER for a in node.all_input_nodes))


def target_name_of(gm, node_name):
    return next(target_name(node) for node in gm.graph.nodes if node.name == node_name)


def _trained_like(captured, family):
    """`all`, then alpha and beta moved away from 1 as training would (at 1 the fold would be trivial)."""
    gm = ac.PassManager.from_pipeline("all", seq_len=16).run(captured(family)).graph_module
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in gm.named_parameters():
            if "ffn_scale" in name:
                parameter.copy_(torch.empty(()).uniform_(0.3, 3.0, generator=generator))
    return gm


# GPT-2 (sequential residual) and NeoX (parallel residual); every family also runs in
# tests/test_core_passes.py's PassCase, there with alpha = beta = 1.
@pytest.mark.parametrize("family", ["gpt2-tiny", "pythia-tiny"])
def test_fold_scales_removes_every_scalar_product_and_keeps_the_logits(captured, family):
    gm = _trained_like(captured, family)
    assert _scalar_products(gm) == 4  # alpha and beta in each of 2 layers
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = gm(tokens)
    result = ac.PassManager.from_pipeline("fold-scales", seq_len=16).run(gm)
    folded = result.graph_module
    assert _scalar_products(folded) == 0
    assert result.report.passes[0].changed == 4
    with torch.no_grad():
        after = folded(tokens)
    before, after = (x[0] if isinstance(x, (tuple, list)) else x for x in (before, after))
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    assert not any("ffn_scale" in name for name, _ in folded.named_parameters())


def test_fold_scales_saves_exactly_the_products_under_bumblebee(captured):
    gm = _trained_like(captured, "gpt2-tiny")
    folded = ac.PassManager.from_pipeline("fold-scales", seq_len=16).run(gm).graph_module
    kept = analyze(gm, profile="bumblebee", network="wan", seq_len=16)
    gone = analyze(folded, profile="bumblebee", network="wan", seq_len=16)
    products = sum(op.bytes for op in kept.ops if target_name_of(gm, op.name) == "mul")
    assert products > 0 and gone.bytes == pytest.approx(kept.bytes - products, abs=1)  # totals are whole bytes
    assert gone.rounds < kept.rounds


def test_fold_scales_leaves_a_stream_that_feeds_a_layernorm_and_says_why(captured):
    result = ac.PassManager.from_pipeline("scale-ffn,fold-scales", seq_len=16).run(captured("gpt2-tiny"))
    entry = result.report.passes[-1]
    assert entry.changed == 0
    assert entry.notes and "left as is" in entry.notes[0] and "not a linear layer" in entry.notes[0]
    assert _scalar_products(result.graph_module) == 4


def test_fold_scales_without_scalars_changes_nothing(captured):
    result = ac.PassManager.from_pipeline("remove-layernorm,fold-scales", seq_len=16).run(captured("llama-tiny"))
    assert result.report.passes[-1].changed == 0
    assert result.report.passes[-1].notes == ["no product of the stream with a scalar weight"]
