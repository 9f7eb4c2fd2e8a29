"""Private runs between two real CrypTen parties (processes over gloo), before and after --passes all."""

import multiprocessing

import pytest

from aero_compile.errors import AeroError
from aero_compile.pass_manager import PassManager
from aero_compile.targets.crypten.runner import run_private

pytestmark = [pytest.mark.crypten, pytest.mark.slow]  # every test runs two or three CrypTen parties

SEQ_LEN = 8
# One timed forward pass a run: these tests check rounds, bytes and logits, which are the same on every pass
# (the logits are the first's: party.timed_forward); more passes only steady the median seconds.
ONCE = 1
MODELS = ["gpt2-tiny", "llama-tiny"]


def _per_position_temperature(captured):
    """The EReg(SM(t)+ScFuFFN) variant: a learnable temperature sliced by sym_size(scores) (a public shape read
    off a secret tensor), its entropy outputs stripped for inference."""
    from aero_compile.passes.entropy_hooks import strip_entropy_outputs

    rewritten = PassManager.from_pipeline("all,entropy-hooks{temperature=position}").run(captured("gpt2-tiny"))
    return strip_entropy_outputs(rewritten.graph_module)


@pytest.fixture(scope="module")
def launch(captured, rewritten_all):
    """One launch of the parties for every tfp, per-model-masks run at SEQ_LEN: both models before and after
    `all`, and the per-position temperature graph. Each graph's figures are its own, and its tokens those a
    launch of its own gives (example_input depends on the vocabulary, 256 for all, and the seed alone)."""
    graphs = {f"{model}/{stage}": gm for model in MODELS
              for stage, gm in (("before", captured(model)), ("after", rewritten_all(model)))}
    graphs["ereg"] = _per_position_temperature(captured)
    return graphs, run_private(graphs, seq_len=SEQ_LEN, timeout_s=120, repetitions=ONCE)


@pytest.fixture(scope="module")
def measured_runs(launch):
    """measured_runs(model) -> ({stage: graph}, {stage: measured}), before and after `all`."""
    graphs, measured = launch
    return lambda model: ({stage: graphs[f"{model}/{stage}"] for stage in ("before", "after")},
                          {stage: measured[f"{model}/{stage}"] for stage in ("before", "after")})


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stage", ["before", "after"])
def test_private_logits_match_plaintext(measured_runs, model, stage):
    _, measured = measured_runs(model)
    m = measured[stage]
    # Near-ties (plaintext top-2 margin below twice the error) are counted apart; see logits_error.
    assert m["argmax_agreement_resolvable"] >= 0.99, m
    assert m["near_tie_positions"] < SEQ_LEN, m  # some positions must be decidable at all
    assert m["resolvable_positions"] + m["near_tie_positions"] == SEQ_LEN, m  # how many the figure judges
    assert 0 <= m["max_abs_error"] < 0.02, m
    assert m["rounds"] > 0 and m["bytes"] > 0 and m["seconds"] > 0
    # Both parties take part in the same rounds and, two-party CrypTen being symmetric, send the same bytes.
    assert (m["owner_rounds"], m["owner_bytes"]) == (m["rounds"], m["bytes"])
    assert sum(op["rounds"] for op in m["by_op"].values()) == m["rounds"]
    assert m["provider"] == "tfp"


@pytest.mark.parametrize("model", MODELS)
def test_passes_remove_the_norm_and_activation_rounds(measured_runs, model):
    _, measured = measured_runs(model)
    before, after = measured["before"], measured["after"]
    norm, activation = ("layernorm", "gelu") if model == "gpt2-tiny" else ("rmsnorm", "silu")
    for kind in (norm, activation):
        assert before["by_op"][kind]["rounds"] > 0, kind
        assert after["by_op"].get(kind, {}).get("rounds", 0) == 0, kind
    assert after["rounds"] < before["rounds"] and after["bytes"] < before["bytes"]
    assert before["by_op"]["softmax"]["rounds"] == after["by_op"]["softmax"]["rounds"]  # AERO keeps softmax


@pytest.mark.parametrize("model", MODELS)
def test_measured_matches_the_cost_analyzer(measured_runs, model):
    from aero_compile.cost import analyze

    graphs, measured = measured_runs(model)
    for stage, gm in graphs.items():
        predicted = analyze(gm, profile="crypten", seq_len=SEQ_LEN, batch=1)
        assert predicted.rounds == measured[stage]["rounds"], (stage, predicted.by_op, measured[stage]["by_op"])
        assert abs(predicted.bytes - measured[stage]["bytes"]) <= 0.02 * measured[stage]["bytes"], stage
        # weights masked once per model (the default): the setup's openings, one per weight, as priced
        offline = measured[stage]["offline"]
        assert (predicted.offline.rounds, predicted.offline.bytes) == (offline["rounds"], offline["bytes"]), stage
        assert offline["rounds"] > 0


def test_trusted_third_party_provider(rewritten_all):
    from aero_compile.cost import analyze

    after = rewritten_all("gpt2-tiny")
    m = run_private({"after": after}, seq_len=4, provider="ttp", timeout_s=120, repetitions=ONCE)["after"]
    assert m["provider"] == "ttp" and m["weight_masks"] == "per-model"
    assert m["owner_rounds"] > m["rounds"]  # the owner also talks to the dealer; the client does not
    assert m["argmax_agreement_resolvable"] >= 0.99 and m["max_abs_error"] < 0.02
    # the dealer keeps each weight's mask B and deals C = A.B per query: the same protocol as tfp, as priced
    predicted = analyze(after, profile="crypten", seq_len=4, batch=1)
    assert (predicted.rounds, predicted.offline.rounds) == (m["rounds"], m["offline"]["rounds"]) and m["offline"]["rounds"] > 0
    assert abs(predicted.bytes - m["bytes"]) <= 0.02 * m["bytes"] and predicted.offline.bytes == m["offline"]["bytes"]


def test_weights_masked_per_query_reproduce_the_old_protocol(measured_runs):
    from aero_compile.cost import analyze

    graphs, per_model = measured_runs("gpt2-tiny")
    after, masked_once = graphs["after"], per_model["after"]
    m = run_private({"after": after}, seq_len=SEQ_LEN, timeout_s=120, weight_masks="per-query",
                    repetitions=ONCE)["after"]
    assert m["weight_masks"] == "per-query" and m["offline"] == {"rounds": 0, "bytes": 0}
    assert m["argmax_agreement_resolvable"] >= 0.99 and m["max_abs_error"] < 0.02
    predicted = analyze(after, profile="crypten", seq_len=SEQ_LEN, batch=1, weight_masks="per-query")
    assert predicted.rounds == m["rounds"] and abs(predicted.bytes - m["bytes"]) <= 0.02 * m["bytes"]
    assert predicted.offline.bytes == 0
    # same rounds; every weight is opened again per query, at least what masking once opens at setup
    assert m["rounds"] == masked_once["rounds"]
    assert m["bytes"] - masked_once["bytes"] >= masked_once["offline"]["bytes"] > 0
    for kind in ("linear", "embedding"):
        assert m["by_op"][kind]["bytes"] > masked_once["by_op"][kind]["bytes"], kind


def test_unknown_provider_is_one_line_error(captured):
    with pytest.raises(AeroError, match="unknown CrypTen provider") as error:
        run_private({"before": captured("gpt2-tiny")}, seq_len=4, provider="nope")
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def other_families(captured):
    """HF GPT-2 (NewGELU region, Conv1D as addmm) and GPT-NeoX (rotary, parallel residual), before the passes,
    in one launch."""
    return run_private({model: captured(model) for model in ("hf-gpt2-tiny", "pythia-tiny")}, seq_len=4,
                       timeout_s=120, repetitions=ONCE)


@pytest.mark.parametrize("model", ["hf-gpt2-tiny", "pythia-tiny"])
def test_other_families_lower_and_agree(other_families, model):
    m = other_families[model]
    assert m["argmax_agreement_resolvable"] >= 0.99 and m["max_abs_error"] < 0.02, m
    assert m["by_op"]["softmax"]["rounds"] > 0 and m["by_op"]["gelu"]["rounds"] > 0


def test_a_graph_that_reads_token_ids_directly_is_refused_with_the_node_named():
    import torch

    from aero_compile.capturing import capture

    class ReadsIds(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 4)

        def forward(self, input_ids):
            return self.embed(input_ids) * (input_ids > 3).unsqueeze(-1).float()

    with pytest.raises(AeroError, match=r"node 'gt' \(gt\) reads the token ids directly"):
        run_private({"before": capture(ReadsIds())}, seq_len=4, timeout_s=60)


def test_trained_graph_with_per_position_temperature_runs_privately(launch):
    """The EReg(SM(t)+ScFuFFN) variant (``_per_position_temperature``) must lower and agree."""
    m = launch[1]["ereg"]
    assert m["argmax_agreement_resolvable"] >= 0.99 and m["max_abs_error"] < 0.02, m
