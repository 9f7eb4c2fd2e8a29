"""The attention passes on every backend: CrypTen private runs, the crypten profile per op form, the
bumblebee derivation, ONNX.

gpt2-tiny's random initialisation gives attention scores of ~1e-5 (every head exactly uniform), where no
normalization can go wrong. ``sharpened`` rescales the same weights to trained-like ranges (residual
std ~0.7, attention scores std ~2.5 with rows from -12 to +13, logits std ~3), so the ReLU, square,
exp and reciprocal inputs under CrypTen are the ones a trained model gives them; ``mixed`` sharpens
some heads only, so that linearize-heads replaces the uniform ones and keeps a softmax over the rest.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import onnxruntime

import pytest
import torch
import torch.fx as fx

from aero_compile.blocks import attention_forms
from aero_compile.capturing import example_input, run_graph
from aero_compile.cost import analyze, load_profile
from aero_compile.tools.fit_bumblebee import DERIVED, derived_entries
from aero_compile.ops import MASK_VALUE, classify_graph, target_name
from aero_compile.pass_manager import PassManager
from aero_compile.passes.softmax_no_max import MARGIN, RECIPROCAL_FLOOR, UPPER, softmax_no_max
from aero_compile.passes.softmax_to_quad import softmax_to_quad
from aero_compile.passes.softmax_to_relu import softmax_to_relu
from aero_compile.secrecy import Secrecy, propagate_secrecy
from aero_compile.targets.crypten.calibrate import FormContext
from aero_compile.targets.crypten.runner import run_private

# Every attention variant through every backend (~7 s of pipelines, ONNX exports, CrypTen parties):
# the passes themselves are tested quickly in test_attention_passes.py.
pytestmark = [pytest.mark.crypten, pytest.mark.slow]

SEQ_LEN = 16  # private runs: a length the crypten profile measured softmax at (mixed keeps softmax heads)
MIXED_HEADS = {0: [0, 2], 1: [1]}  # sharpened heads of the mixed model; the other five stay uniform

# variant -> (weights, pipeline): every pass and option of issue 10
VARIANTS = {
    "relu-length": ("sharp", "all,softmax-to-relu{norm=length}"),
    "relu-sum": ("sharp", "all,softmax-to-relu{norm=sum}"),
    "quad-sum": ("sharp", "all,softmax-to-quad{norm=sum}"),
    "quad-length": ("sharp", "all,softmax-to-quad{norm=length}"),
    "quad-length+fold": ("sharp", "all,softmax-to-quad{norm=length},fold-scales"),  # the bumblebee 8x pipeline
    # Calibrated offsets, on random weights: on the trained-like (sharp) ones 1 private run in 4 ended with
    # logits off by ~550 (fixed-point wrap: rows far below the offset make the reciprocal's values huge),
    # so the accuracy assertion would be a coin toss there; docs/cost-model.md, "Accuracy under CrypTen", says so.
    "no-max": ("random", "all,softmax-no-max"),
    "no-max-bound": ("random", "all,softmax-no-max{bound=2}"),  # a fixed offset suits ~0 scores only
    "linear-all": ("random", "all,linearize-heads"),  # uniform heads: all eight go
    "linear-mixed": ("mixed", "all,linearize-heads"),  # five go, three keep a softmax over their slice
    "linear-mixed+relu-sum": ("mixed", "all,linearize-heads,softmax-to-relu{norm=sum}"),  # relu over that slice
}


def sharpened(gm: fx.GraphModule, heads: dict[int, list[int]] | None = None, n_head: int = 4,
              embed: float = 25.0, query_key: float = 14.0) -> fx.GraphModule:
    """gpt2-tiny with trained-like scales: embeddings x ``embed``, the query and key rows of ``heads``
    (all by default) x ``query_key``."""
    gm = copy.deepcopy(gm)
    scaled = set()
    with torch.no_grad():
        for name, weight in gm.named_parameters():
            if name in ("wte.weight", "wpe.weight"):
                weight.mul_(embed)
                scaled.add(name)
            elif name.endswith("attn.c_attn.weight"):
                layer, width = int(name.split(".")[1]), weight.shape[1]
                size = width // n_head
                for head in (range(n_head) if heads is None else heads.get(layer, [])):
                    for start in (head * size, width + head * size):  # query rows, key rows
                        weight[start:start + size].mul_(query_key)
                scaled.add(name)
    assert len(scaled) == 4, scaled  # gpt2-tiny's parameter names: fail loudly if they change
    return gm


@pytest.fixture(scope="module")
def rewritten(captured):
    """variant -> the pass manager's result on its weights."""
    random = captured("gpt2-tiny")
    weights = {"random": random, "sharp": sharpened(random), "mixed": sharpened(random, MIXED_HEADS)}
    return {name: PassManager.from_pipeline(pipeline).run(weights[which])
            for name, (which, pipeline) in VARIANTS.items()}


@pytest.fixture(scope="module")
def measured(rewritten):
    """Every variant run privately between two CrypTen parties, in one launch: one forward pass each (the
    tests check rounds, bytes and logits, the same on every pass; more passes only steady the seconds)."""
    return run_private({name: result.graph_module for name, result in rewritten.items()}, seq_len=SEQ_LEN,
                       timeout_s=300, repetitions=1)


def _changed(result, pass_name: str) -> int:
    return next(record.changed for record in result.report.passes if record.name == pass_name)


def test_each_variant_has_the_form_it_names(rewritten):
    forms = {name: attention_forms(result.graph_module) for name, result in rewritten.items()}
    for name in ("relu-length", "relu-sum", "quad-sum", "quad-length"):
        assert forms[name] == {name: 2}, (name, forms[name])
    assert forms["no-max"] == forms["no-max-bound"] == {"exp-no-max": 2}
    assert forms["linear-all"] == {} and _changed(rewritten["linear-all"], "linearize-heads") == 8
    # the mixed case really mixes: five heads linear, a softmax over the other three in both layers
    assert forms["linear-mixed"] == {"softmax": 2} and _changed(rewritten["linear-mixed"], "linearize-heads") == 5
    assert forms["linear-mixed+relu-sum"] == {"relu-sum": 2}
    assert forms["quad-length+fold"] == {"quad-length": 2} and _changed(rewritten["quad-length+fold"], "fold-scales") == 4


# -- CrypTen: the whole model, measured against the analyzer and against plaintext --------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_private_run_costs_what_the_analyzer_predicts(rewritten, measured, variant):
    predicted = analyze(rewritten[variant].graph_module, "crypten", seq_len=SEQ_LEN, batch=1)
    run = measured[variant]
    assert not predicted.unsupported and not predicted.approximate, (predicted.unsupported, predicted.approximate)
    assert predicted.rounds == run["rounds"], (predicted.by_op, run["by_op"])
    assert abs(predicted.bytes - run["bytes"]) <= 0.02 * run["bytes"]
    for kind in set(predicted.by_op) | {k for k, v in run["by_op"].items() if v["rounds"] or v["bytes"]}:
        mine, theirs = predicted.by_op.get(kind), run["by_op"].get(kind, {"rounds": 0, "bytes": 0})
        assert mine is not None and mine.rounds == theirs["rounds"], (kind, mine, theirs)
        assert abs(mine.bytes - theirs["bytes"]) <= 0.02 * theirs["bytes"], (kind, mine, theirs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_private_logits_match_plaintext(rewritten, measured, variant):
    gm, run = rewritten[variant].graph_module, measured[variant]
    logits = run_graph(gm, example_input(gm, seq_len=SEQ_LEN, batch=1, seed=0))  # the tokens run_private used
    assert run["near_tie_positions"] <= SEQ_LEN // 4, run  # else the agreement below is vacuous
    assert run["argmax_agreement_resolvable"] >= 0.99, run
    assert run["max_abs_error"] <= 0.01 * logits.abs().max().item(), run


def test_attention_nonlinearities_are_what_the_private_run_spends(measured):
    """The forms' own protocols ran: ReLU / square / exp + reciprocal instead of softmax; linear heads cost nothing."""
    by_op = {name: {k for k, v in run["by_op"].items() if v["rounds"]} for name, run in measured.items()}
    assert "softmax" not in set().union(*(by_op[n] for n in VARIANTS if n != "linear-mixed"))
    assert {"relu", "div"} <= by_op["linear-mixed+relu-sum"]
    assert {"relu"} <= by_op["relu-length"] and "div" not in by_op["relu-length"]
    assert {"relu", "div"} <= by_op["relu-sum"]
    assert {"pow", "div"} <= by_op["quad-sum"] and "div" not in by_op["quad-length"]
    assert {"exp", "div"} <= by_op["no-max"]
    assert by_op["linear-all"] <= {"linear", "embedding", "mul", "matmul"}  # no Q.K or P.V product left either
    assert measured["linear-all"]["by_op"].get("matmul", {"rounds": 0})["rounds"] == 0
    assert "softmax" in by_op["linear-mixed"]


def test_the_mixed_model_pays_softmax_on_its_three_sharp_heads_only(captured, measured):
    """3 of 8 heads keep a softmax: their measured bytes are 3/8 of what the whole softmax would cost."""
    every_head = PassManager.from_pipeline("all").run(sharpened(captured("gpt2-tiny"), MIXED_HEADS)).graph_module
    full = sum(op.bytes for op in analyze(every_head, profile="crypten", seq_len=SEQ_LEN).ops if op.kind == "softmax")
    assert measured["linear-mixed"]["by_op"]["softmax"]["bytes"] == pytest.approx(3 / 8 * full, rel=0.02)


# -- CrypTen: each attention form alone, per node, at sizes the calibration never ran -----------------

aten = torch.ops.aten
# form -> the pass call that makes it from a softmax (b: the public offset of softmax-no-max)
FORM_PASSES = {"relu-length": lambda gm, b: softmax_to_relu(gm, norm="length"),
               "relu-sum": lambda gm, b: softmax_to_relu(gm, norm="sum"),
               "quad-sum": lambda gm, b: softmax_to_quad(gm, norm="sum"),
               "quad-length": lambda gm, b: softmax_to_quad(gm, norm="length"),
               "exp-no-max": lambda gm, b: softmax_no_max(gm, bound=b)}
SCORE_STD = 2.5  # the sharpened model's score spread
COST_SIZE = (1, 3, 12)  # batch, heads, T: the calibration grid is 2-D [2..4, 8..32]; [1, 3, 12, 12] is not in it
ACCURACY_T = 64
# softmax-no-max: a row's reciprocal sees its row mean of exp(s - mean - b) >= exp(max - mean - b): rows whose
# dominant exponent is above log(RECIPROCAL_FLOOR) are inside; far below (< -8) they would lose their terms
INSIDE_EXPONENT = math.log(RECIPROCAL_FLOOR)


def _row_mean(scores, visible):
    return scores.masked_fill(~visible, 0.0).sum(-1) / visible.sum(-1)


def form_graph(form: str, batch: int, heads: int, length: int, seed: int = 0):
    """softmax(scores masked causally) rewritten by the pass into ``form``: (module, scores, the offset b)."""
    scores = torch.randn(batch, heads, length, length, generator=torch.Generator().manual_seed(seed)) * SCORE_STD
    root = torch.nn.Module()
    root.register_buffer("hidden", ~torch.ones(length, length, dtype=torch.bool).tril())
    graph = fx.Graph()
    scores_node, hidden = graph.placeholder("scores"), graph.get_attr("hidden")
    masked = graph.call_function(aten.masked_fill.Scalar, (scores_node, hidden, MASK_VALUE))
    graph.output(graph.call_function(aten.softmax.int, (masked, -1)))
    gm = fx.GraphModule(root, graph)
    visible = torch.ones(length, length, dtype=torch.bool).tril()
    spread = (scores.masked_fill(~visible, float("-inf")).amax(-1) - _row_mean(scores, visible)).max().item()
    bound = round(max(0.0, spread + MARGIN - UPPER), 3)  # as calibration sets b (here one for all heads)
    return FORM_PASSES[form](gm, bound).graph_module, scores, bound


class _FormContext(FormContext):
    """Calibration's context (it shares the scores) that also reads the form's public values (masks, lengths)."""

    def __init__(self, gm, crypten, scores, public):
        super().__init__(gm, crypten, [scores])
        self.public = public

    def value(self, node):
        return self.secret[node] if node in self.secret else self.public[node]


def _run_forms_in_party(cases):
    """One CrypTen party: lower each form op by op through the backend's dispatch; small results only
    (crypten.mpc.run_multiprocess joins its parties before reading their results off a pipe). Like
    calibration's ``measure_in_party`` (deliberately parallel), but over a graph of many nodes."""
    from aero_compile.targets.crypten.compat import import_crypten
    from aero_compile.targets.crypten.dispatch import lower_node
    from aero_compile.targets.crypten.lowering import Stopwatch

    torch.set_num_threads(1)
    crypten = import_crypten()
    crypten.cfg.communicator.verbose = True
    results = []
    for form, batch, heads, length in cases:
        gm, scores, bound = form_graph(form, batch, heads, length)
        levels, public = propagate_secrecy(gm), {}
        for node in gm.graph.nodes:  # masks and row lengths in plaintext, as PrivateGraph computes them
            if node.op not in ("placeholder", "output") and levels[node] is not Secrecy.SECRET:
                args = fx.node.map_arg(node.args, lambda a: torch.zeros(scores.shape) if levels[a] is Secrecy.SECRET
                                       else public[a])  # a secret argument of a public node: its shape only
                public[node] = (getattr(gm, str(node.target)) if node.op == "get_attr"
                                else node.target(*args, **node.kwargs))
        context, ops = _FormContext(gm, crypten, scores, public), []
        for op in classify_graph(gm):
            secret = [n for n in op.nodes if levels[n] is Secrecy.SECRET]
            if secret:
                with Stopwatch(crypten.communicator.get()) as watch:
                    for node in secret:
                        context.secret[node] = lower_node(context, node)
                ops.append((op.name, watch.measure.rounds, watch.measure.bytes))
        output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        private, plain = context.secret[output].get_plain_text(), gm(scores)
        visible = torch.ones(length, length, dtype=torch.bool).tril()
        row_error = (private - plain).abs().amax(-1).flatten()
        # the dominant term's exponent in softmax-no-max: row max - row mean - b
        offset = (scores.masked_fill(~visible, float("-inf")).amax(-1) - _row_mean(scores, visible) - bound).flatten()
        inside = offset >= INSIDE_EXPONENT
        results.append({"form": form, "size": (batch, heads, length), "ops": ops,
                        "finite": bool(torch.isfinite(private).all()),
                        "masked_max": private.masked_select(~visible).abs().max().item(),
                        "max_error": row_error.max().item(),
                        "inside_rows": int(inside.sum()),
                        "inside_error": row_error[inside].max().item() if inside.any() else float("nan"),
                        "far_rows": int((offset < -8).sum()),
                        "far_error": row_error[offset < -8].max().item() if (offset < -8).any() else float("nan")})
    return results


@pytest.fixture(scope="module")
def forms_measured():
    from aero_compile.targets.crypten.compat import import_crypten

    import_crypten()
    import crypten.mpc as mpc

    cases = [(form, *COST_SIZE) for form in FORM_PASSES]
    cases += [(form, 1, 2, ACCURACY_T) for form in FORM_PASSES]
    results = mpc.run_multiprocess(world_size=2)(_run_forms_in_party)(cases)
    assert results and results[0] is not None, "a CrypTen party failed"
    return {(r["form"], r["size"]): r for r in results[0]}


def _analyzer_steps(gm, scores):
    from torch.fx.passes.shape_prop import ShapeProp

    from aero_compile.cost.features import protocol_steps
    from aero_compile.shapes import TensorMeta

    ShapeProp(gm).propagate(scores)
    metas = {n: TensorMeta(tuple(n.meta["tensor_meta"].shape), n.meta["tensor_meta"].dtype)
             for n in gm.graph.nodes if hasattr(n.meta.get("tensor_meta"), "shape")}
    levels = propagate_secrecy(gm)
    return {op.name: priced[2] for op in classify_graph(gm) if (priced := protocol_steps(op, levels, metas))}


@pytest.mark.parametrize("form", FORM_PASSES)
def test_each_form_node_costs_what_crypten_measures(forms_measured, form):
    profile = load_profile("crypten")
    measured = forms_measured[form, COST_SIZE]
    gm, scores, _ = form_graph(form, *COST_SIZE)
    steps = _analyzer_steps(gm, scores)
    spent = [(name, rounds, nbytes) for name, rounds, nbytes in measured["ops"] if rounds or nbytes]
    assert {name for name, _, _ in spent} == set(steps), (spent, steps)  # free exactly where the analyzer says
    for name, rounds, nbytes in spent:
        costs = [profile.cost(step.entry, step.features) for step in steps[name]]
        assert not any(c.approximate for c in costs)
        assert sum(c.rounds for c in costs) == rounds, (name, steps[name])
        assert abs(sum(c.bytes for c in costs) - nbytes) <= 0.02 * nbytes, (name, steps[name], nbytes)
    expected = {"relu-length": ["relu"], "relu-sum": ["relu", "reciprocal", "mul"],
                "quad-sum": ["square", "reciprocal", "mul"],
                "quad-length": ["square"], "exp-no-max": ["exp", "reciprocal", "mul"]}[form]
    assert [step.entry for name, _, _ in spent for step in steps[name]] == expected


@pytest.mark.parametrize("form", FORM_PASSES)
def test_each_form_is_accurate_in_crypten_at_trained_like_scores(forms_measured, form):
    result = forms_measured[form, (1, 2, ACCURACY_T)]
    assert result["finite"] and result["masked_max"] < 1e-3, result  # masks stay masks, nothing overflows
    if form == "exp-no-max":
        # offsets from the row mean and a calibrated b: every row inside, none far (the first form of the
        # pass, offset from the largest row max, left rows > 8 below it: error up to 1.0)
        summary = {key: result[key] for key in ("inside_rows", "far_rows", "max_error", "inside_error")}
        assert result["far_rows"] == 0, summary
        assert result["max_error"] < 0.03, summary  # every row; CrypTen's own softmax: 7e-3 at T=64
    else:
        assert result["max_error"] < 2e-3, result


# -- bumblebee: derived entries ------------------------------------------------------------------------

# entry -> the fitted constant it is priced at (the derivation; assumptions in the profile's "derived")
BUMBLEBEE_DERIVATION = {"mul": "relu_bytes_per_element", "square": "relu_bytes_per_element",
                        "exp": "softmax_bytes_per_element", "reciprocal": "gelu_bytes_per_element"}


def test_bumblebee_derived_entries_are_recomputed_from_the_fitted_constants():
    profile = load_profile("bumblebee")
    constants = profile.data["fit"]["constants"]
    rho = int(constants["rounds_per_nonlinear"])
    assert {entry: source for entry, (source, _) in DERIVED.items()} == BUMBLEBEE_DERIVATION
    for entry, source in BUMBLEBEE_DERIVATION.items():
        assert profile.ops[entry] == {"rounds": {"calls": rho}, "bytes": {"elements": round(constants[source], 4)}}
        derived = profile.data["derived"][entry]
        assert derived["from"] == source and len(derived["assumption"]) > 40
        assert profile.ops[entry]["bytes"]["elements"] > 0
    assert {k: profile.ops[k] for k in DERIVED} == derived_entries(constants)  # the shipped file is the code's
    # conservative: a secret product no cheaper than the HE product it replaces, exp no cheaper than ReLU
    he = constants["he_bytes_per_io_element"]
    assert profile.ops["mul"]["bytes"]["elements"] >= 3 * he  # an HE product ships a, b and a * b
    assert profile.ops["exp"]["bytes"]["elements"] > profile.ops["relu"]["bytes"]["elements"]
    # a product with a weight the server holds in the clear stays the fitted HE product
    assert profile.ops["mul/weight"] == profile.ops["linear"]


def test_every_attention_form_is_priced_by_both_profiles(rewritten):
    for name, result in rewritten.items():
        for protocol in ("crypten", "bumblebee"):
            report = analyze(result.graph_module, protocol, "wan", seq_len=SEQ_LEN)
            assert not report.unsupported, (name, protocol, report.unsupported)
            assert all(record.bytes > 0 for record in report.ops), (name, protocol)  # nothing new is free
    report = analyze(rewritten["relu-sum"].graph_module, "bumblebee", "wan", seq_len=SEQ_LEN)
    entries = {step.entry for record in report.ops for step in record.steps}
    assert {"relu", "reciprocal", "mul", "mul/weight"} <= entries  # weights x 1/row sum; scale-ffn's beta * x


# -- ONNX ----------------------------------------------------------------------------------------------

# Three exports hold every op the variants add (checked below); an export takes ~10 s. Softmax itself
# is exported by every family in test_onnx_export.py.
ONNX_VARIANTS = {"linear-mixed+relu-sum": {"Relu", "Reciprocal", "CumSum", "Gather", "Concat"},
                 "quad-length": {"Pow"}, "no-max": {"Exp", "Sub"}}


def _aten_targets(gm):
    return {target_name(node) for node in gm.graph.nodes if node.op == "call_function"}


def test_the_onnx_variants_cover_every_op_the_passes_add(rewritten):
    covered = set().union(*(_aten_targets(rewritten[name].graph_module) for name in ONNX_VARIANTS))
    for name, result in rewritten.items():
        missing = _aten_targets(result.graph_module) - {"softmax"} - covered
        assert not missing, (name, missing)


@pytest.mark.parametrize("variant", ONNX_VARIANTS)
def test_form_exports_to_onnx_and_matches_in_onnxruntime(rewritten, variant, tmp_path):
    from aero_compile.targets.onnx import export_onnx, write_onnx

    gm = rewritten[variant].graph_module
    info = write_onnx(export_onnx(gm), tmp_path / f"{variant}.onnx")
    assert info["checker"] == "passed" and [e["shape"] for e in info["onnxruntime"]] == [[1, 7], [3, 13]]
    histogram = info["op_histogram"]
    assert ONNX_VARIANTS[variant] <= set(histogram), histogram
    assert "Softmax" not in histogram
    ids = example_input(gm, seq_len=11, batch=2, seed=5)  # a third shape, from the written file
    session = onnxruntime.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
    expected = run_graph(gm, ids).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 + 1e-4 * np.abs(expected).max())
