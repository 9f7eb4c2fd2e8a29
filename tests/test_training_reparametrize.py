"""remove-layernorm{replace=weight-norm|spectral-norm}: reparametrized in training, folded on export into
exactly the graph and cost of plain remove-layernorm, with the training graph's logits."""

import pytest
import torch

import aero_compile as ac
from aero_compile.cost.analyzer import analyze
from aero_compile.ops import classify_graph, op_counts
from aero_compile.targets.pt2 import save_pt2
from aero_compile.training import TrainConfig, train
from aero_compile.training.reparametrize import has_reparametrizations, spectral_norm_weight, weight_norm_weight

PLAIN = "remove-layernorm,gelu-to-identity"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("aero-cache"))


def test_reparametrizations_start_at_the_weight_and_normalize():
    torch.manual_seed(0)
    v = torch.randn(6, 4)
    g = torch.full((6, 1), 2.0)
    w = weight_norm_weight(v, g, 1)
    torch.testing.assert_close(w.norm(dim=1), torch.full((6,), 2.0))
    u = torch.nn.functional.normalize(torch.randn(6), dim=0)
    for _ in range(50):  # training-mode calls run the power iteration: sigma converges to the top singular value
        w = spectral_norm_weight(v, torch.tensor(1.0), u)
    assert torch.linalg.matrix_norm(w.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.slow
def test_export_folds_back_to_plain_remove_layernorm(cache_dir, tmp_path, captured):
    mode = "weight-norm"
    config = TrainConfig(model="gpt2-tiny", passes=f"remove-layernorm{{replace={mode}}},gelu-to-identity", steps=6,
                         out_dir=str(tmp_path / mode), cache_dir=cache_dir, corpus_max_bytes=300_000, batch_size=4,
                         seq_len=32, eval_batches=1, quiet=True, pictures=False, lr=1e-2, entropy_reg=False)
    result = train(config)
    reparametrized = [r for r in result.metrics["reparametrized"] if r["mode"] == mode]
    assert len(reparametrized) == 4  # c_attn and c_fc of both blocks (the tied lm_head is left as is)
    exported = torch.export.load(str(tmp_path / mode / "model.pt2")).module()
    assert not has_reparametrizations(result.graph_module)
    # plain remove-layernorm, written the way training writes it
    plain = ac.PassManager.from_pipeline(PLAIN).run(captured("gpt2-tiny")).graph_module
    save_pt2(plain, tmp_path / "plain.pt2")
    plain_exported = torch.export.load(str(tmp_path / "plain.pt2")).module()
    for ours, theirs in ((result.graph_module, plain), (exported, plain_exported)):
        assert op_counts(classify_graph(ours)) == op_counts(classify_graph(theirs))
        ours, theirs = analyze(ours, "crypten", "wan", seq_len=16), analyze(theirs, "crypten", "wan", seq_len=16)
        assert (ours.rounds, ours.bytes) == (theirs.rounds, theirs.bytes) and ours.rounds > 0
        assert ours.latency_s == pytest.approx(theirs.latency_s, rel=1e-12)
    # the folded logits are the training graph's (evaluation mode): checked by the run on a validation
    # window, and here against the training graph rebuilt from the checkpoint
    assert result.metrics["reparametrization_fold_rel_diff"] <= 1e-5
    inputs = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        folded = exported(inputs)
        reference = _training_graph_logits(config, inputs)
    assert (folded - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()
    # training moved the scales: the folded weights are not the start weights
    start = captured("gpt2-tiny").get_parameter("h.0.attn.c_attn.weight")
    assert not torch.allclose(result.graph_module.get_parameter("h.0.attn.c_attn.weight"), start)


@pytest.mark.slow
def test_spectral_norm_trains_and_folds_to_plain_remove_layernorm(captured):
    """The spectral-norm graph trained a few steps by hand (u and the scales move), folded on a copy."""
    from aero_compile.capturing import deep_copy_graph_module
    from aero_compile.training.reparametrize import fold_reparametrizations, reparametrize

    gm = ac.PassManager.from_pipeline("remove-layernorm{replace=spectral-norm},gelu-to-identity").run(
        captured("gpt2-tiny")).graph_module
    assert len([r for r in reparametrize(gm) if r["mode"] == "spectral-norm"]) == 4
    u_start = gm.get_buffer("h_0_attn_c_attn_weight_sigma_u").clone()
    optimizer = torch.optim.AdamW(gm.parameters(), lr=1e-2)
    inputs = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        logits = gm(inputs)
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), inputs[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(gm.get_buffer("h_0_attn_c_attn_weight_sigma_u"), u_start)  # the power iteration ran
    folded = deep_copy_graph_module(gm)
    assert fold_reparametrizations(folded) == 4 and has_reparametrizations(gm)
    plain = ac.PassManager.from_pipeline(PLAIN).run(captured("gpt2-tiny")).graph_module
    assert op_counts(classify_graph(folded)) == op_counts(classify_graph(plain))
    with torch.no_grad():
        reference, logits = gm(inputs), folded(inputs)
    assert (logits - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()


def _training_graph_logits(config: TrainConfig, inputs: torch.Tensor) -> torch.Tensor:
    """The reparametrized training graph, rebuilt and loaded from the run's checkpoint."""
    from aero_compile.training.checkpoint import checkpoint_path
    from aero_compile.training.model import build_graph, make_trainable

    built = build_graph(config)
    model = make_trainable(built.graph_module, config)
    model.load_state_dict(torch.load(checkpoint_path(config), weights_only=True)["model"])
    assert has_reparametrizations(model.graph)
    return model.graph(inputs)[0]
