"""The .pt2 target: what it writes loads in a fresh interpreter with only torch.

Mixture-of-experts models dispatch tokens with standard ops (transformers' ``batched_mm``), every op of
their graph is classified, and a graph that still calls a library's custom op is refused in one line.
The last test of the session reloads every .pt2 any test wrote, in one subprocess that cannot import
transformers or aero_compile.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aero_compile as ac
from aero_compile.capturing import DYNAMIC_DIMS
from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.models.hf import CausalLMLogits, hf_causal_lm
from aero_compile.ops import OpKind, classify_graph, target_name
from aero_compile.targets.pt2 import save_pt2

from custom_op_models import CustomOpLM

MIXTRAL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, vocab_size=64, max_position_embeddings=64, num_local_experts=4,
               num_experts_per_tok=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)
# .pt2 files tests write on purpose as inputs for error paths (a custom op, bytes that are no archive):
# the tool did not write them, and they must NOT load fresh.
FOREIGN = {"opaque.pt2",  # tests/test_onnx_failures_and_cli.py
           "corrupt.pt2"}  # tests/test_core_loader_cli.py


def is_foreign(path) -> bool:
    return path.name in FOREIGN or path.name.startswith("foreign")


@pytest.fixture(scope="session")
def moe(tmp_path_factory):
    """A tiny Mixtral through --passes all, written as .pt2: (PipelineResult, path)."""
    gm = ac.capture(hf_causal_lm("mixtral", MIXTRAL), name="mixtral-tiny")
    result = ac.PassManager.from_pipeline("all", seq_len=16).run(gm)
    path = tmp_path_factory.mktemp("moe") / "mixtral.aero.pt2"
    save_pt2(result.graph_module, path)
    return result, path


@pytest.mark.slow  # a Mixtral captured and rewritten (~8 s)
def test_moe_graph_is_standard_ops_every_op_classified_and_both_ffns_found(moe):
    result, path = moe
    for gm in (result.before, result.graph_module):
        ops = classify_graph(gm)
        assert [op.name for op in ops if op.kind is OpKind.UNKNOWN] == []
        assert all(getattr(node.target, "namespace", "aten") in ("aten", "prims") for node in gm.graph.nodes
                   if isinstance(node.target, torch._ops.OpOverload))
    kinds = {(op.kind, op.module_class) for op in classify_graph(result.before)}
    assert (OpKind.SOFTMAX, "MixtralTopKRouter") in kinds and (OpKind.MAX, "MixtralTopKRouter") in kinds
    assert (OpKind.GATHER, "MixtralExperts") in kinds  # expert weights picked by the routed ids: not free
    passes = {entry.name: entry for entry in result.report.passes}
    assert passes["scale-ffn"].changed == 2 and not passes["scale-ffn"].notes  # both layers' MoE blocks
    assert passes["gelu-to-identity"].changed == 2
    remaining = {(entry.kind, entry.module) for entry in result.report.after.remaining_nonlinear}
    assert remaining == {("softmax", "MixtralAttention"), ("softmax", "MixtralTopKRouter"),
                         ("max", "MixtralTopKRouter"), ("div", "MixtralTopKRouter"), ("gather", "MixtralExperts")}
    assert path.exists()


class _ManyOps(torch.nn.Module):
    """Ops families use outside the classic decoder: convolutions (hybrid linear attention), random draws
    (BigBird), sorting, histograms and integer division (MoE dispatch), scatter by index."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.conv = torch.nn.Conv1d(8, 8, 3, padding=2, groups=8)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        x = self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        noise = torch.rand_like(x) * 0
        values, order = torch.sort(x, dim=-1)
        counts = torch.histc(values.float(), bins=4, min=-1, max=1)
        slots = torch.div(order, 2, rounding_mode="floor")  # in [0, 4)
        picked = x.new_zeros(8).index_put_((slots.reshape(-1)[:1],), values.reshape(-1)[:1])
        return x + noise + 0 * (counts.sum() + picked)  # causal: the extras are multiplied by zero


def test_every_op_of_these_forms_is_classified():
    gm = ac.capture(_ManyOps(), name="many-ops")
    assert [(op.name, target_name(op.output)) for op in classify_graph(gm) if op.kind is OpKind.UNKNOWN] == []
    kinds = {target_name(op.output): op.kind for op in classify_graph(gm)}
    assert kinds["conv1d"] is OpKind.MATMUL and kinds["sort"] is OpKind.MAX and kinds["histc"] is OpKind.COMPARE
    assert kinds["index_put_"] is OpKind.GATHER  # its indices come from the sort: data-dependent


def test_transformers_custom_expert_op_is_classified_around_and_refused_in_one_line(tmp_path):
    """transformers' default experts (grouped_mm) fall back to its custom op under export: every other op
    of that dispatch is classified, the custom op is named, and no .pt2 is written."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mixtral", **{**MIXTRAL, "num_hidden_layers": 1})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", experts_implementation="grouped_mm")

    class Logits(torch.nn.Module):  # not CausalLMLogits, which would switch the experts to batched_mm
        def __init__(self):
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    gm = ac.capture(Logits(), name="mixtral-grouped")
    unknown = {target_name(op.output) for op in classify_graph(gm) if op.kind is OpKind.UNKNOWN}
    assert unknown == {"grouped_mm_fallback"}  # sort, histc, floor_divide, index_put_ are classified
    with pytest.raises(AeroError) as error:
        save_pt2(gm, tmp_path / "grouped.pt2")
    message = str(error.value)
    assert "\n" not in message and "custom op 'transformers::grouped_mm_fallback'" in message
    assert "MixtralExperts" in message and "nothing written" in message
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_the_cost_claim_for_unclassified_ops_and_the_pt2_in_one_line(tmp_path, capsys):
    program = torch.export.export(CustomOpLM(), (torch.zeros(2, 8, dtype=torch.long),),
                                  dynamic_shapes=DYNAMIC_DIMS)
    source = tmp_path / "foreign-twice.pt2"  # an input with a custom op on purpose (loads only here)
    torch.export.save(program, str(source))
    assert main([str(source), "--passes", "none", "--seq-len", "8", "--report-json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "cost: no claim made: 1 op(s) aero-compile cannot classify" in out and "twice" in out
    assert "MPC cost" not in out  # no cost table, no savings
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["after"]["unknown_ops"] == ["twice"] and "savings" not in report
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main([str(source), "--passes", "none", "--seq-len", "8", "-o", str(out_dir / "m.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aero-compile: error: cannot write a .pt2: the rewritten graph calls the custom op "
                          "'aero_test::twice'") and "\n" not in err
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow  # a whole CLI run (several seconds): kept out of the fast core
def test_a_pt2_with_an_unregistered_custom_op_is_named_not_called_incomplete(tmp_path):
    program = torch.export.export(CustomOpLM(), (torch.zeros(2, 8, dtype=torch.long),), dynamic_shapes=DYNAMIC_DIMS)
    source = tmp_path / "foreign-twice.pt2"
    torch.export.save(program, str(source))
    done = subprocess.run([sys.executable, "-m", "aero_compile", str(source), "--passes", "none", "--no-cost"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # this op is not registered there
    assert done.returncode == 2
    assert done.stderr.strip() == (f"aero-compile: error: cannot read '{source}': it calls the op "
                                   "'aero_test::twice', which is not registered here (a library's custom op: "
                                   "import the library that defines it, or re-export the model without it)")


_RELOAD = """
import json, sys
sys.modules["transformers"] = None  # a fresh interpreter with only torch: no library registers its ops
sys.modules["aero_compile"] = None
import torch
results = {}
for path in sys.argv[1:]:
    try:
        torch.export.load(path).module()
        results[path] = "ok"
    except Exception as exc:
        results[path] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
print(json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.runs_last
def test_every_pt2_the_suite_wrote_loads_in_a_fresh_interpreter(moe, tmp_path_factory):
    files = sorted(path for path in tmp_path_factory.getbasetemp().rglob("*.pt2") if path.is_file())
    ours = [path for path in files if not is_foreign(path)]
    assert moe[1] in ours  # at least the MoE model is among them
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _RELOAD, *map(str, files)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path_factory.getbasetemp(), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {path: error for path, error in results.items() if error != "ok" and not is_foreign(Path(path))}
    assert failed == {}
    # the check discriminates: files holding a custom op do not load there
    assert all(results[str(path)] != "ok" for path in files if is_foreign(path))
