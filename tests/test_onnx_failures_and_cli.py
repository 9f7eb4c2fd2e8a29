"""ONNX backend from the command line, and what an export failure looks like: one line, no file."""

import json

import pytest
import torch
import torch.fx as fx

from aero_compile.capturing import DYNAMIC_DIMS
from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.targets.onnx import save_onnx

from custom_op_models import CustomOpLM


def OpaqueLM():
    """An LM calling an op that runs in PyTorch and export but that no ONNX translation exists for."""
    return CustomOpLM(head=False)


class DataDependentLM(CustomOpLM):
    def forward(self, input_ids):
        hidden = self.embed(input_ids)
        return hidden if hidden.sum() > 0 else -hidden  # a Python branch on tensor data


def assert_one_line_and_nothing_written(message, directory):
    assert "\n" not in message
    assert list(directory.iterdir()) == []


def test_an_op_without_onnx_translation_is_named(tmp_path):
    with pytest.raises(AeroError) as error:
        save_onnx(fx.symbolic_trace(OpaqueLM()), tmp_path / "opaque.onnx")
    message = str(error.value)
    assert message.startswith("cannot export to ONNX: no ONNX translation for the op 'aero_test.twice'")
    assert_one_line_and_nothing_written(message, tmp_path)


def test_a_data_dependent_branch_is_named(tmp_path):
    with pytest.raises(AeroError) as error:
        save_onnx(_traced_branch(), tmp_path / "branch.onnx")
    message = str(error.value)
    assert message.startswith("cannot export to ONNX: torch.export failed:")
    assert "data-dependent" in message
    assert_one_line_and_nothing_written(message, tmp_path)


def _traced_branch():
    """A GraphModule that still holds the Python branch (symbolic_trace cannot trace it)."""
    graph = fx.Graph()
    ids = graph.placeholder("input_ids")
    out = graph.call_function(_branch, (graph.call_module("embed", (ids,)),))
    graph.output(out)
    return fx.GraphModule(DataDependentLM(), graph)


@torch.fx.wrap
def _branch(hidden):
    return hidden if hidden.sum() > 0 else -hidden


def test_cli_failure_is_one_line_on_stderr_and_no_file(tmp_path, capfd):
    program = torch.export.export(OpaqueLM(), (torch.zeros(2, 8, dtype=torch.long),),
                                  dynamic_shapes=DYNAMIC_DIMS)
    torch.export.save(program, str(tmp_path / "opaque.pt2"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main([str(tmp_path / "opaque.pt2"), "--passes", "none", "--emit", "onnx", "-o", str(out_dir / "m.onnx")]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("aero-compile: error: cannot export to ONNX: no ONNX translation for the op 'aero_test.twice'")
    assert_one_line_and_nothing_written(err, out_dir)


def test_cli_emits_onnx_with_the_before_after_histogram_and_no_entropy_outputs(tmp_path, capsys):
    model, report_path = tmp_path / "one-layer.onnx", tmp_path / "report.json"
    argv = ["gpt2-tiny{n_layer=1}", "--passes", "all,entropy-hooks", "--emit", "onnx", "-o", str(model),
            "--report-json", str(report_path)]
    assert main(argv) == 0
    output = json.loads(report_path.read_text())["output"]
    assert output["format"] == "onnx" and output["path"] == str(model) and model.exists()
    assert output["stripped_outputs"] == 1
    assert output["outputs"] == {"logits": ["batch", "sequence", 256]}
    assert "Log" not in output["op_histogram"]
    before, after = output["original"]["op_histogram"], output["op_histogram"]
    assert (before["LayerNormalization"], before["Gelu"]) == (3, 1)  # ln_1, ln_2, ln_f; one MLP
    assert "LayerNormalization" not in after and "Gelu" not in after
    assert before["Softmax"] == after["Softmax"] == 1
    printed = capsys.readouterr().out
    assert "input_ids [batch, sequence] -> logits [batch, sequence, 256]" in printed
    assert "onnxruntime vs PyTorch, rewritten: [1, 7] max |diff|" in printed and "LayerNormalization" in printed


def test_cli_rejects_emit_without_matching_output_before_any_work(tmp_path, capsys):
    assert main(["gpt2-tiny", "--emit", "onnx", "-o", str(tmp_path / "m.pt2")]) == 2
    assert main(["gpt2-tiny", "--emit", "onnx"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["aero-compile: error: --emit onnx writes a .onnx file, but the output is "
                      f"'{tmp_path / 'm.pt2'}'", "aero-compile: error: --emit onnx needs -o PATH.onnx"]
    assert list(tmp_path.iterdir()) == []
