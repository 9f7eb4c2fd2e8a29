"""ONNX backend: every family exports, passes onnx.checker and matches PyTorch in onnxruntime.

Dynamo export is the slow part (seconds per model), so each (model, original|rewritten) pair is
exported and written once per module and the tests read what that produced; each test still checks
the file on its own (a fresh onnxruntime session at a shape the emitter did not use).
"""

import dataclasses

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import aero_compile as ac
from aero_compile.capturing import example_input, run_graph
from aero_compile.errors import AeroError
from aero_compile.graph_info import graph_info
from aero_compile.targets.onnx import export_onnx, write_onnx
from aero_compile.targets.onnx.export import logits_only

MODELS = ["gpt2-tiny", "hf-gpt2-tiny", "pythia-tiny", "llama-tiny"]
# GPT-2 tiny in the fast core; the Hugging Face families export in 3-7 s each (dynamo), so they are slow.
FAMILIES = [MODELS[0]] + [pytest.param(name, marks=pytest.mark.slow) for name in MODELS[1:]]
STATES = ["original", "rewritten"]
# What --passes all must remove from the ONNX graph: norms, GELU (erf or tanh form), RMSNorm's math.
REMOVED_BY_PASSES = {"LayerNormalization", "Gelu", "Erf", "Tanh", "Pow", "ReduceMean", "Sqrt", "Reciprocal"}


@pytest.fixture(scope="module")
def graphs(captured, rewritten_all):
    """graphs(name) -> (original, rewritten by --passes all), computed once per session."""
    return lambda name: (captured(name), rewritten_all(name))


@pytest.fixture(scope="module")
def written(graphs, tmp_path_factory):
    """written(name, state) -> (graph, write_onnx's report entry, the export): one export and write per pair."""
    cache = {}

    def get(name, state):
        if (name, state) not in cache:
            gm = graphs(name)[STATES.index(state)]
            exported = export_onnx(gm)
            path = tmp_path_factory.mktemp("onnx") / f"{name}-{state}.onnx"
            cache[name, state] = (gm, write_onnx(exported, path), exported)
        return cache[name, state]

    return get


@pytest.fixture(scope="module")
def gpt2_export(written):
    """The rewritten GPT-2 tiny's export, for the tests that write it in other ways."""
    return written("gpt2-tiny", "rewritten")[2]


def run_onnx(path, ids):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": ids.numpy()})[0]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", FAMILIES)
def test_export_is_checked_and_matches_pytorch(name, state, written):
    gm, info, _ = written(name, state)
    vocab = graph_info(gm).vocab_size
    assert info["checker"] == "passed"
    assert info["inputs"] == {"input_ids": ["batch", "sequence"]}
    assert info["outputs"] == {"logits": ["batch", "sequence", vocab]}
    assert [entry["shape"] for entry in info["onnxruntime"]] == [[1, 7], [3, 13]]
    for entry in info["onnxruntime"]:
        assert entry["max_abs"] <= info["tolerance"]["atol"] + info["tolerance"]["rtol"] * entry["max_logit"]
    onnx.checker.check_model(info["path"], full_check=True)
    ids = example_input(gm, seq_len=5, batch=2, seed=7)  # a third shape, from the written file itself
    np.testing.assert_allclose(run_onnx(info["path"], ids), run_graph(gm, ids).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_passes_remove_the_nonlinear_onnx_ops_and_keep_softmax(name, written):
    before = written(name, "original")[1]["op_histogram"]
    after = written(name, "rewritten")[1]["op_histogram"]
    assert REMOVED_BY_PASSES & set(before), "the original should contain a norm or GELU to remove"
    assert not REMOVED_BY_PASSES & set(after), {op: after[op] for op in REMOVED_BY_PASSES & set(after)}
    assert after["Softmax"] == before["Softmax"] == 2


def test_entropy_outputs_are_stripped_before_export(graphs):
    rewritten = graphs("gpt2-tiny")[1]
    hooked = ac.PassManager.from_pipeline("entropy-hooks").run(rewritten).graph_module
    assert isinstance(hooked(example_input(hooked, 4)), tuple)  # the graph itself returns entropies
    clean, stripped = logits_only(hooked)
    assert stripped == 2
    ids = example_input(rewritten, seq_len=6, batch=2, seed=3)
    torch.testing.assert_close(clean(ids), run_graph(rewritten, ids), rtol=0, atol=0)
    # (the CLI test exports such a graph: one ONNX output, logits)


def test_external_data_is_written_beside_the_model_and_loads(gpt2_export, tmp_path):
    gm = gpt2_export.graph_module
    info = write_onnx(gpt2_export, tmp_path / "ext.onnx", external_data=True)
    assert info["external_data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    ids = example_input(gm, seq_len=9, batch=1, seed=5)
    np.testing.assert_allclose(run_onnx(tmp_path / "ext.onnx", ids), run_graph(gm, ids).numpy(), rtol=1e-4, atol=1e-5)


def test_a_mismatch_in_onnxruntime_is_an_error_and_writes_nothing(graphs, gpt2_export, tmp_path):
    wrong = dataclasses.replace(gpt2_export, graph_module=graphs("gpt2-tiny")[0])  # compare with other logits
    with pytest.raises(AeroError, match=r"onnxruntime disagrees with PyTorch at input_ids \[1, 7\]"):
        write_onnx(wrong, tmp_path / "wrong.onnx")
    assert list(tmp_path.iterdir()) == []


def test_weights_past_the_size_threshold_go_to_external_data_unasked(gpt2_export, tmp_path, monkeypatch):
    from torch.onnx._internal.exporter import _onnx_program

    # The real threshold is 1.5 GB; lowering it exercises the same path without a 2 GB model.
    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 1024)
    info = write_onnx(gpt2_export, tmp_path / "big.onnx")
    assert info["external_data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
