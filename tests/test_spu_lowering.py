"""The SPU backend's lowering: every family before and after ``all``, and every attention pass, as jax
(checked in plaintext against torch), then compiled and run by SPU's simulator (semi2k: the same
lowering as cheetah, a fraction of its time) with logits that agree with plaintext."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from aero_compile.capturing import example_input, run_graph
from aero_compile.pass_manager import PassManager
from aero_compile.targets.spu.lowering import SpuProgram
from aero_compile.targets.spu.runner import run_private

pytestmark = [pytest.mark.spu, pytest.mark.slow]  # every family compiled and run by SPU's simulator

SEQ_LEN = 8
MODELS = ["gpt2-tiny", "hf-gpt2-tiny", "llama-tiny", "pythia-tiny"]  # ours, HF GPT-2, Llama, NeoX
ATTENTION = ["softmax-to-relu{norm=length}", "softmax-to-relu{norm=sum}", "softmax-to-quad{norm=length}",
             "softmax-to-quad{norm=sum}", "softmax-no-max", "linearize-heads"]


@pytest.fixture(scope="module")
def graphs(captured, rewritten_all):
    cache = {}

    def get(model: str, pipeline: str):
        if pipeline == "all":
            return rewritten_all(model)
        if (model, pipeline) not in cache:
            before = captured(model)
            cache[model, pipeline] = before if pipeline == "none" else PassManager.from_pipeline(pipeline).run(before).graph_module
        return cache[model, pipeline]

    return get


def _plaintext_error(gm) -> tuple[float, float]:
    program = SpuProgram(gm, batch=1, seq_len=SEQ_LEN)
    ids = example_input(gm, seq_len=SEQ_LEN)
    lowered = np.asarray(jax.jit(program.function)(*program.client_inputs(ids), *program.owner_inputs()))
    reference = run_graph(gm, ids).numpy()
    return float(np.abs(lowered - reference).max()), float(np.abs(reference).max())


@pytest.mark.parametrize("attention", ATTENTION)
def test_every_attention_pass_lowers(graphs, attention):
    """Checked as jax in plaintext (exact to float32; the SPU run of one of them is below)."""
    error, scale = _plaintext_error(graphs("gpt2-tiny", f"all,{attention}"))
    assert error <= 1e-5 * max(scale, 1.0), (error, scale)


# Each family before and after `all` (a compile is ~3 s the first time, then cached on disk), and one
# attention form: the whole of every graph runs under SPU.
SPU_RUNS = [(model, pipeline) for model in MODELS for pipeline in ("none", "all")] + \
           [("gpt2-tiny", "all,softmax-to-quad{norm=sum}")]


@pytest.fixture(scope="module")
def simulated(graphs):
    by_model: dict[str, dict] = {}
    for model, pipeline in SPU_RUNS:
        by_model.setdefault(model, {})[pipeline] = graphs(model, pipeline)
    # one run per program: these tests check counters and logits, which are the first run's however many
    # runs are timed (runner.timed_profiles); the median of several only matters for seconds
    return {model: run_private(stages, seq_len=SEQ_LEN, protocol="semi2k", repetitions=1)
            for model, stages in by_model.items()}


@pytest.mark.parametrize("model,pipeline", SPU_RUNS)
def test_spu_logits_agree_with_plaintext(simulated, model, pipeline):
    m = simulated[model][pipeline]
    assert m["engine"] == "spu" and m["protocol"] == "semi2k" and m["mode"] == "simulator"
    assert m["near_tie_positions"] <= SEQ_LEN // 4, m  # else the agreement below is vacuous
    assert m["argmax_agreement_resolvable"] >= 0.99, m
    assert m["max_abs_error"] < 2e-3, m
    assert m["bytes"] > 0 and m["rounds"] > 0 and m["seconds"] > 0
    assert sum(op["bytes"] for op in m["by_op"].values()) == m["bytes"]  # every byte is some op's


def test_passes_remove_what_they_say_under_spu(simulated):
    before, after = simulated["gpt2-tiny"]["none"], simulated["gpt2-tiny"]["all"]
    assert {"tanh", "rsqrt"} <= set(before["by_op"]) and not {"tanh", "rsqrt"} & set(after["by_op"])
    assert after["bytes"] < before["bytes"] / 2
    quad = simulated["gpt2-tiny"]["all,softmax-to-quad{norm=sum}"]
    assert "exponential" not in quad["by_op"] and "exponential" in after["by_op"]
