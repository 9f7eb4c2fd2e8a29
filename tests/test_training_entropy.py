"""The entropy-hooks pass and AERO's entropy penalty, checked against direct computations."""

import math

import numpy as np
import pytest
import torch
import torch.fx as fx

import aero_compile as ac
from aero_compile.graph_info import graph_info
from aero_compile.passes.entropy_hooks import strip_entropy_outputs
from aero_compile.training import EntropyRegularizer, entropy_penalty


class _ProbabilityRecorder(fx.Interpreter):
    """Runs a graph and keeps the value of the named nodes (the softmax outputs)."""

    def __init__(self, gm, names):
        super().__init__(gm)
        self.names, self.values = set(names), {}

    def run_node(self, node):
        result = super().run_node(node)
        if node.name in self.names:
            self.values[node.name] = result.detach().double()
        return result


def _direct_entropy(probabilities: torch.Tensor) -> np.ndarray:
    """E(h) = -(1/T) sum_i sum_j a_ij log a_ij, averaged over the batch, in float64 with 0 log 0 = 0."""
    a = probabilities.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * np.log(a), 0.0)
    return -terms.sum(axis=-1).mean(axis=(0, 2))


@pytest.mark.parametrize("model,pipeline", [("gpt2-tiny", "entropy-hooks"),
                                            ("gpt2-tiny", "all,entropy-hooks{temperature=position}"),
                                            ("llama-tiny", "all,entropy-hooks{temperature=head}")])
def test_entropy_outputs_match_direct_computation(captured, model, pipeline):
    gm = ac.PassManager.from_pipeline(pipeline).run(captured(model)).graph_module
    if "temperature" in pipeline:  # move the temperatures off 1 so that they matter
        with torch.no_grad():
            for name, param in gm.named_parameters():
                if "temperature" in name:
                    param.copy_(torch.linspace(0.5, 2.0, param.numel()).reshape(param.shape))
    softmax_names = [output.softmax for output in graph_info(gm).entropy_outputs]
    inputs = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(1))
    recorder = _ProbabilityRecorder(gm, softmax_names)
    logits, entropies = recorder.run(inputs)
    assert logits.shape == (3, 11, 256)
    assert len(entropies) == len(softmax_names) == 2
    for name, entropy in zip(softmax_names, entropies):
        probabilities = recorder.values[name]
        assert probabilities.shape[-1] == 11 and torch.allclose(probabilities.sum(-1), torch.ones(()).double())
        np.testing.assert_allclose(entropy.detach().double().numpy(), _direct_entropy(probabilities), rtol=1e-5, atol=1e-6)
    # Row i of causal attention spreads over at most i+1 keys: the mean entropy is at most mean(log(i+1)).
    bound = np.mean(np.log(np.arange(1, 12)))
    assert all((e <= bound + 1e-5).all() for e in entropies)


def test_hooks_preserve_logits_and_strip_for_export(captured, tmp_path):
    base = ac.PassManager.from_pipeline("all").run(captured("gpt2-tiny")).graph_module
    hooked = ac.PassManager.from_pipeline("all,entropy-hooks{temperature=position}").run(captured("gpt2-tiny")).graph_module
    inputs = torch.randint(0, 256, (2, 9))
    logits, entropies = hooked(inputs)
    assert torch.allclose(logits, base(inputs), atol=1e-6)  # temperatures start at 1
    assert sum(1 for name, _ in hooked.named_parameters() if "temperature" in name) == 2
    stripped = strip_entropy_outputs(hooked)
    assert isinstance(stripped(inputs), torch.Tensor) and torch.equal(stripped(inputs), logits)
    assert isinstance(hooked(inputs), tuple)  # stripping copies; the hooked graph keeps its outputs
    from aero_compile.targets.pt2 import save_pt2

    save_pt2(stripped, tmp_path / "m.pt2")
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert torch.allclose(loaded(inputs), logits, atol=1e-5)


def test_hooks_on_a_graph_without_attention_add_nothing_and_refuse_a_hooked_one(captured):
    # A graph with no attention softmax (an MLP, or attention passes replaced them all) still trains:
    # the hooks add no output, return the logits alone, and say so.
    no_attention = ac.capture(torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)), name="mlp")
    result = ac.PassManager.from_pipeline("entropy-hooks").run(no_attention)
    assert result.report.passes[-1].changed == 0
    assert "no attention softmax left" in result.report.passes[-1].notes[0]
    assert isinstance(result.graph_module(torch.zeros(1, 3, dtype=torch.long)), torch.Tensor)
    hooked = ac.PassManager.from_pipeline("entropy-hooks").run(captured("gpt2-tiny")).graph_module
    with pytest.raises(ac.AeroError, match="already has entropy outputs"):
        ac.PassManager.from_pipeline("entropy-hooks").run(hooked)
    with pytest.raises(ac.AeroError, match="temperature must be one of"):
        ac.PassManager.from_pipeline("entropy-hooks{temperature=layer}").run(captured("gpt2-tiny"))


def test_entropy_penalty_matches_hand_computation():
    # T = 16: E_max = log 16 = 2.7726, band gamma * E_max = 0.5545.
    # layer 0: theta 0.5 -> target 1.3863; E = 2.0 -> delta 0.6137 (outside: 0.3766);
    #                                      E = 0.5 -> delta -0.8863 (outside: 0.7855)
    # layer 1: E = 1.5, theta 0.5 -> delta 0.1137 (inside: 0); E = 1.2, theta 0.25 -> delta 0.5069 (inside: 0)
    e_max = math.log(16)
    layer0 = ((2.0 - 0.5 * e_max) ** 2 + (0.5 - 0.5 * e_max) ** 2) / 2
    expected = (layer0 + 0.0) / 2
    assert abs(expected - 0.29054) < 1e-4
    entropies = [torch.tensor([2.0, 0.5]), torch.tensor([1.5, 1.2])]
    thetas = [torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.25])]
    assert entropy_penalty(entropies, thetas, seq_len=16, gamma=0.2).item() == pytest.approx(expected, rel=1e-6)
    # A wider band (gamma 0.35 -> 0.970) holds every |delta| (at most 0.886): nothing is penalized.
    assert entropy_penalty(entropies, thetas, seq_len=16, gamma=0.35).item() == 0.0


def test_regularizer_weights_by_lambda_and_learns_theta():
    regularizer = EntropyRegularizer([2, 2], lam=1e-2, gamma=0.2, theta_init=0.5)
    entropies = [torch.tensor([2.0, 0.5]), torch.tensor([1.5, 1.2])]
    weighted, raw = regularizer(entropies, 16)
    assert weighted.item() == pytest.approx(1e-2 * raw.item())
    weighted.backward()
    grad = regularizer.thetas[0].grad
    # d(delta^2)/d(theta) = -2 delta E_max: the first head's entropy is above its target, so theta rises.
    assert grad[0] < 0 < grad[1] and torch.all(regularizer.thetas[1].grad == 0)
    frozen = EntropyRegularizer([2], learnable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
