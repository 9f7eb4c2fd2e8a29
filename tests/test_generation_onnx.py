"""The decode step as ONNX (past K/V in, present K/V out), generating in onnxruntime as in PyTorch."""

import json

import numpy as np
import pytest
import torch

import aero_compile as ac
from aero_compile.cli import main
from aero_compile.generation import derive_programs
from aero_compile.generation.decoding import greedy_generate
from aero_compile.targets.onnx.decoder_with_past import generate_in_onnxruntime, save_decoder_with_past


@pytest.mark.slow
def test_cli_writes_the_decode_step_beside_the_onnx_file(tmp_path, capsys):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    assert main(["gpt2-tiny", "--generate", "2", "--prompt-ids", "3,1,4,1,5", "--no-cost", "-o", str(out),
                 "--report-json", str(report)]) == 0
    decoder = tmp_path / "m.decoder_with_past.onnx"
    assert decoder.is_file() and out.is_file()
    entry = json.loads(report.read_text())["output"]["decoder_with_past"]
    assert entry["path"] == str(decoder) and entry["prompt_tokens"] == 5
    assert entry["inputs"] == ["input_ids", "past_0", "past_1", "past_2", "past_3"]
    assert "ONNX decode step" in capsys.readouterr().out
    assert not list(tmp_path.glob(".aero-compile-stage-*"))


@pytest.mark.slow
def test_llama_quad_attention_generates_the_same_tokens_in_onnxruntime(tmp_path, captured):
    gm = ac.PassManager.from_pipeline("all,softmax-to-quad{norm=length}").run(captured("llama-tiny")).graph_module
    programs = derive_programs(gm)
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(3))
    info = save_decoder_with_past(programs, tmp_path / "d.onnx", prompt)
    tokens, logits = generate_in_onnxruntime(tmp_path / "d.onnx", programs, prompt, 6)
    expected, expected_logits = greedy_generate(programs, prompt, 6)
    assert tokens == expected and info["greedy_tokens"] == expected[:4]
    assert max(float(np.abs(a - b[0].numpy()).max()) for a, b in zip(logits, expected_logits)) < 1e-4
    assert len(set(expected)) > 1  # a check on varied tokens, not one repeated id


def test_crypten_target_is_refused_with_generate(tmp_path, capsys):
    assert main(["gpt2-tiny", "--generate", "2", "--onnx-for", "crypten", "-o", str(tmp_path / "c.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "drop --onnx-for crypten" in err and "\n" not in err
