"""The pass manager: pipelines as text, ordering, verification, errors that name the pass and node."""

import pytest
import torch

import aero_compile as ac
from aero_compile.errors import AeroError, PassError
from aero_compile.pass_manager import PASSES, PassResult, expand_pipeline, register_pass
from aero_compile.pipeline_text import parse_pipeline


def test_pipeline_text_with_options():
    assert parse_pipeline("remove-layernorm,prune-ffn{last=6},gelu-to-identity{relu=true,silu=false}") == [
        ("remove-layernorm", {}), ("prune-ffn", {"last": 6}), ("gelu-to-identity", {"relu": True, "silu": False})]


def test_all_expands_to_the_aero_pipeline():
    assert [n for n, _ in expand_pipeline("all")] == [
        "canonicalize", "remove-layernorm", "gelu-to-identity", "scale-ffn", "fold-linear"]
    assert expand_pipeline("none") == []


def test_unknown_pass_lists_known_ones():
    with pytest.raises(AeroError, match="unknown pass 'nope': known passes are .*fold-linear"):
        ac.PassManager.from_pipeline("nope")


def test_unknown_option_names_the_pass():
    with pytest.raises(AeroError, match="pass 'prune-ffn' has no option"):
        ac.PassManager.from_pipeline("prune-ffn{first=2}").run(ac.capture("gpt2-tiny"))


def test_malformed_pipeline():
    with pytest.raises(AeroError, match="unbalanced braces"):
        ac.PassManager.from_pipeline("prune-ffn{last=2")


def test_ordering_constraints_move_fold_after_activation_rewrite(captured):
    manager = ac.PassManager.from_pipeline("fold-linear,gelu-to-identity")
    assert [n for n, _ in manager.items] == ["gelu-to-identity", "fold-linear"]
    result = manager.run(captured("gpt2-tiny"))
    assert result.report.reordered == ["gelu-to-identity", "fold-linear"]
    assert result.report.passes[1].changed == 2  # the fold found the FFNs: order mattered


def test_input_module_is_never_modified(captured):
    gm = captured("gpt2-tiny")
    code, state = gm.code, {k: v.clone() for k, v in gm.state_dict().items()}
    result = ac.PassManager.from_pipeline("all").run(gm)
    with torch.no_grad():  # training the result must not reach the input's tensors either
        for p in result.graph_module.parameters():
            p.add_(1.0)
    assert gm.code == code
    assert all(torch.equal(state[k], v) for k, v in gm.state_dict().items())


@pytest.fixture
def broken_passes():
    @register_pass("test-break-graph", preserves_computation=True, summary="test: makes a 4-D matmul a 2-D mm")
    def break_graph(gm):
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is torch.ops.aten.matmul.default:
                node.target = torch.ops.aten.mm.default  # attention scores are 4-D: mm must fail
                break
        return PassResult(gm, 1)

    @register_pass("test-fake-preserving", preserves_computation=True, summary="test: claims to preserve but scales logits")
    def fake_preserving(gm):
        output = next(n for n in gm.graph.nodes if n.op == "output")
        logits = output.args[0][0]
        with gm.graph.inserting_before(output):
            scaled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (logits, 2.0))
        output.args = ((scaled,),)
        return PassResult(gm, 1)

    yield
    del PASSES["test-break-graph"], PASSES["test-fake-preserving"]


def test_error_names_pass_and_node(broken_passes, captured):
    with pytest.raises(PassError, match=r"pass 'test-break-graph' failed at node 'matmul'.*does not run"):
        ac.PassManager.from_pipeline("test-break-graph").run(captured("gpt2-tiny"))


def test_preserving_pass_is_verified(broken_passes, captured):
    with pytest.raises(PassError, match="should preserve the computation but changed the logits"):
        ac.PassManager.from_pipeline("test-fake-preserving").run(captured("gpt2-tiny"))


def test_architecture_change_records_drift(captured):
    entry = ac.PassManager.from_pipeline("remove-layernorm").run(captured("gpt2-tiny")).report.passes[0]
    assert entry.preserves_computation is False and entry.max_abs_diff > 1e-3
