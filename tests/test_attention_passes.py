"""The attention passes compute what their docstrings say, and linearize-heads decides from data."""

import copy
import math

import pytest
import torch
import torch.fx as fx

import aero_compile as ac
from aero_compile.blocks import attention_forms, attention_sites
from aero_compile.capturing import check_causal_decoder, example_input, run_graph
from aero_compile.errors import AeroError
from aero_compile.ops import OpKind, classify_graph


def _probabilities(gm, tokens):
    """The attention weights of each layer: the node of each inserted form that the rest of the graph reads."""
    def tagged(node):
        return bool(node.meta.get("aero_attention_form"))

    wanted = [node for node in gm.graph.nodes if tagged(node) and any(not tagged(u) for u in node.users)]
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node in wanted:
                values[node] = out.detach()
            return out

    Recorder(gm).run(tokens)
    return [values[node] for node in wanted]


@pytest.fixture(scope="module")
def scores_of(captured):
    """The masked attention scores of gpt2-tiny on a batch, per layer (what every form transforms)."""
    from aero_compile.calibration import attention_statistics

    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    stats = attention_statistics(captured("gpt2-tiny"), tokens)
    return tokens, [scores for _, scores, _ in stats]


def _rewrite(captured, pipeline):
    return ac.PassManager.from_pipeline(pipeline).run(captured("gpt2-tiny"))


@pytest.mark.parametrize("pipeline, expected", [
    ("softmax-to-relu", lambda s, n: torch.relu(s) / n),
    ("softmax-to-relu{norm=sum}", lambda s, n: torch.relu(s) / (torch.relu(s).sum(-1, keepdim=True) / n + 1e-2) / n),
    ("softmax-to-quad{norm=length}", lambda s, n: ((s + 5) ** 2 / 25 * _visible(s)) / n),
    ("softmax-to-quad{c=3}", lambda s, n: _quad_sum(s, n, 3.0)),
    ("softmax-no-max{bound=1.5}", lambda s, n: torch.exp(s - 1.5) / torch.exp(s - 1.5).sum(-1, keepdim=True)),
])
def test_attention_form_computes_its_formula(captured, scores_of, pipeline, expected):
    tokens, scores = scores_of
    result = _rewrite(captured, pipeline)
    gm = result.graph_module
    assert not [op for op in classify_graph(gm) if op.kind is OpKind.SOFTMAX]
    got = _probabilities(gm, tokens)
    assert len(got) == len(scores) == 2
    # The first layer sees the original scores (later layers see the rewritten model's own)
    n = _visible(scores[0]).sum(-1, keepdim=True)
    torch.testing.assert_close(got[0], expected(scores[0], n), rtol=1e-4, atol=1e-6)
    for probabilities in got:
        assert (probabilities * (1 - _visible(probabilities))).abs().max() == 0  # no weight on future keys
    assert sum(attention_forms(gm).values()) == 2 and "softmax" not in attention_forms(gm)


def _visible(s):
    return torch.ones(s.shape[-2:]).tril()


def _quad_sum(s, n, c):
    weights = (s + c) ** 2 / c ** 2 * _visible(s)
    return weights / (weights.sum(-1, keepdim=True) / n + 1e-2) / n


def test_sum_normalized_forms_give_rows_that_sum_to_one(captured, scores_of):
    tokens, _ = scores_of
    for pipeline in ("softmax-to-quad", "softmax-no-max"):
        got = _probabilities(_rewrite(captured, pipeline).graph_module, tokens)
        for probabilities in got:
            # quad's eps (1e-2 on a row mean near 1) costs at most ~1% of the row mass
            torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:-1]), rtol=0, atol=2e-2)


def test_no_max_calibrates_offsets_and_reports_the_exp_window(captured):
    entry = _rewrite(captured, "softmax-no-max{calibrate=2,calib_len=16}").report.passes[-1]
    assert entry.changed == 2
    assert "calibrated on 2 random sequence(s) of 16 tokens" in entry.notes[0]
    layers = [note for note in entry.notes[1:] if note.startswith("layer ")]
    assert len(layers) == 2 and all("spread max - mean = [" in note and "the reciprocal sees [" in note for note in layers)
    # b >= 0 per head: the reciprocal's input is >= exp(-b) on every input (Jensen), <= exp(spread - b) on these
    for note in layers:
        offsets = [float(v) for v in note.split("b = [")[1].split("]")[0].split(", ")]
        assert len(offsets) == 4 and all(b >= 0 for b in offsets)


@pytest.mark.parametrize("pipeline, message", [
    ("softmax-to-relu{norm=max}", "norm must be one of length, sum"),
    ("softmax-to-quad{c=0}", "c must be non-zero"),
    ("softmax-no-max{bound=high}", "bound must be a number"),
    ("linearize-heads{uniform_tol=x}", "uniform_tol must be a number"),
    ("softmax-no-max{calibrate=2,tokens=web}", "unknown calibration source 'web'"),
])
def test_bad_options_are_one_line_errors(captured, pipeline, message):
    with pytest.raises(AeroError, match=message) as error:
        _rewrite(captured, pipeline)
    assert "\n" not in str(error.value)


def test_activation_passes_keep_the_attention_relu(captured):
    result = _rewrite(captured, "softmax-to-relu,gelu-to-identity{relu=true}")
    relus = [op for op in classify_graph(result.graph_module) if op.kind is OpKind.RELU]
    assert len(relus) == 2  # the FFN GELUs went; the attention ReLUs (one per layer) stayed


def _scaled_queries(gm, factors):
    """A copy whose layer-l query projection is multiplied by factors[l] (0: uniform attention)."""
    gm = copy.deepcopy(gm)
    with torch.no_grad():
        for layer, factor in enumerate(factors):
            weight = gm.get_parameter(f"h.{layer}.attn.c_attn.weight")
            bias = gm.get_parameter(f"h.{layer}.attn.c_attn.bias")
            width = weight.shape[0] // 3
            weight[:width] *= factor
            bias[:width] *= factor
    return gm


def test_linearize_heads_replaces_uniform_heads_and_keeps_the_others(captured):
    gm = _scaled_queries(captured("gpt2-tiny"), [0.0, 200.0])  # layer 0 exactly uniform, layer 1 peaked
    result = ac.PassManager.from_pipeline("linearize-heads{calibrate=2,calib_len=32}").run(gm)
    entry = result.report.passes[-1]
    assert entry.changed == 4, entry.notes
    decided = [note for note in entry.notes if note.startswith("layer ")]
    assert len(decided) == 8
    assert all("running mean, drift" in note for note in decided[:4])
    assert all(note.endswith("softmax") for note in decided[4:])
    # layer 0's Q.K product and softmax are gone; layer 1 keeps one softmax over its 4 heads
    forms = attention_forms(result.graph_module)
    assert forms == {"softmax": 1}
    assert entry.max_abs_diff < 1e-4  # a uniform head's running mean is exactly its attention


def test_linearize_heads_with_no_qualifying_head_changes_nothing_and_says_so(captured):
    gm = _scaled_queries(captured("gpt2-tiny"), [200.0, 200.0])
    result = ac.PassManager.from_pipeline("linearize-heads{calibrate=2,calib_len=32}").run(gm)
    entry = result.report.passes[-1]
    assert entry.changed == 0
    assert "no head qualifies: nothing changed" in entry.notes
    assert attention_forms(result.graph_module) == {"softmax": 2}


def test_linearize_heads_dry_run_reports_without_changing(captured):
    entry = _rewrite(captured, "linearize-heads{uniform_tol=1,calibrate=2,calib_len=16,dry_run=true}").report.passes[-1]
    assert entry.changed == 0
    assert any("dry run: 8 head(s) would be linearized" in note for note in entry.notes)


@pytest.mark.parametrize("code", [-1, 0, 1, 2])
def test_linear_head_graph_pattern_matches_its_eager_twin(captured, code):
    """The public pattern the graph builds (running mean, shift k) equals the eager formula the drift
    probe uses: rewriting one head in the graph gives the probe's logits."""
    from aero_compile.passes.linearize_heads import _DriftProbe, _rewrite_site

    gm = captured("gpt2-tiny")
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(5))
    probe = _DriftProbe(gm, tokens)
    site = attention_sites(gm)[1]
    probe_drift = probe.drift(site, 2, code)
    trial = ac.PassManager([]).run(gm).graph_module
    _rewrite_site(trial, attention_sites(trial)[1], [None, None, code, None])
    trial.recompile()
    with torch.no_grad():
        logits = trial(tokens)
    graph_drift = (logits.float() - probe.reference).abs().max().item()
    assert math.isclose(graph_drift, probe_drift, rel_tol=1e-3, abs_tol=1e-6)
    assert graph_drift > 0


def test_calibrate_flag_reaches_calibrating_passes_only(captured):
    manager = ac.PassManager.from_pipeline("softmax-no-max,remove-layernorm,linearize-heads{calibrate=3}",
                                           calibration={"calibrate": 2, "tokens": "random"})
    options = dict(manager.items)
    assert options["softmax-no-max"] == {"calibrate": 2, "tokens": "random"}
    assert options["linearize-heads"]["calibrate"] == 3  # the pipeline's own value wins
    assert options["remove-layernorm"] == {}


def test_a_graph_with_no_softmax_left_trains(captured):
    from aero_compile.training.model import TrainableLM
    from aero_compile.training.regularizer import EntropyRegularizer

    result = _rewrite(captured, "all,softmax-to-relu,entropy-hooks")
    assert "no attention softmax left" in result.report.passes[-1].notes[0]
    model = TrainableLM(result.graph_module, EntropyRegularizer([]))
    tokens = torch.randint(0, 256, (2, 8))
    loss, ce, penalty, entropies = model(tokens, tokens)
    loss.backward()
    assert entropies == [] and penalty.item() == 0.0 and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in result.graph_module.parameters())


def test_no_max_fits_shifted_rows_and_refuses_heads_spread_too_wide(captured):
    # row maxes far apart (the first form of the pass lost such rows): offsets from the row mean fit them
    gm = _scaled_queries(captured("gpt2-tiny"), [60.0, 60.0])
    notes = ac.PassManager.from_pipeline("softmax-no-max{calibrate=2,calib_len=32}").run(gm).report.passes[-1].notes
    assert len(notes) == 3 and not any(note.startswith("warning") for note in notes), notes
    # scores spread within rows beyond what one public offset can serve: refused, pointing at softmax-to-quad
    wide = _scaled_queries(captured("gpt2-tiny"), [400.0, 400.0])
    with pytest.raises(AeroError, match=r"softmax-no-max: layer \d head \d.*too wide.*use softmax-to-quad"):
        ac.PassManager.from_pipeline("softmax-no-max{calibrate=2,calib_len=32}").run(wide)


@pytest.mark.parametrize("model", [pytest.param("hf-gpt2-tiny", marks=pytest.mark.slow), "llama-tiny",
                                   pytest.param("pythia-tiny", marks=pytest.mark.slow)])
def test_quadratic_form_stays_finite_under_hugging_face_masks(captured, model):
    """HF masks scores with finfo.min: squared unmasked, that is inf, and inf * 0 made the logits NaN.

    The drift is bounded by what the form gives on random weights: scores are near 0, so softmax and
    (s+c)^2/c^2 over the row mean (+0.01) both weight the visible keys about uniformly; what differs is the
    slope in s (1 against 2/c) and the +0.01, each about 1% of the attention output. Measured at T=16:
    0.3% (GPT-2) to 1.2% (Llama) of the largest logit; 3% bounds it. A mask that let future keys in breaks
    the causality check (and moves early positions far more)."""
    gm = captured(model)
    result = ac.PassManager.from_pipeline("softmax-to-quad", seq_len=16).run(gm)
    drift = result.report.passes[-1].max_abs_diff
    largest_logit = run_graph(gm, example_input(gm, seq_len=16, batch=1, seed=0)).abs().max().item()
    assert drift is not None and math.isfinite(drift)
    assert drift <= 0.03 * largest_logit, (drift, largest_logit)
    check_causal_decoder(result.graph_module, model)  # masked keys carry no weight
