"""Loading every input form, writing .pt2, and the CLI's behaviour on good and bad input."""

import json
import subprocess
import sys

import pytest
import torch

import aero_compile as ac
from aero_compile.capturing import example_input, run_graph
from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.models import build_builtin


def run_cli(*args):
    """The installed command in a fresh process: what a user sees (stdout, stderr, exit status)."""
    proc = subprocess.run([sys.executable, "-m", "aero_compile", *args], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_state_dict_round_trip(tmp_path):
    model = build_builtin("gpt2-tiny")
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight.mul_(3.0)  # not the built-in's own weights
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = ac.load_model(str(path), arch="gpt2-tiny")
    ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))
    with pytest.raises(AeroError, match="--arch"):
        ac.load_model(str(path))
    with pytest.raises(AeroError, match="does not match the architecture"):
        ac.load_model(str(path), arch="gpt2-tiny{n_layer=3}")


def test_pt2_round_trip_matches_rewritten_graph(tmp_path, rewritten_all):
    out, report_path = tmp_path / "model.aero.pt2", tmp_path / "report.json"
    assert main(["gpt2-tiny", "--passes", "all", "-o", str(out), "--report-json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report) >= {"model", "seq_len", "passes", "before", "after"}
    assert report["after"]["op_counts"].get("layernorm", 0) == 0
    rewritten = rewritten_all("gpt2-tiny")
    reloaded = ac.capture(ac.load_model(str(out)))
    ids = example_input(rewritten, seq_len=13, batch=2, seed=3)
    torch.testing.assert_close(run_graph(reloaded, ids), run_graph(rewritten, ids))


def test_hf_directory(tmp_path):
    hf_model = build_builtin("llama-tiny").model
    hf_model.save_pretrained(tmp_path / "ckpt")
    gm = ac.capture(str(tmp_path / "ckpt"))
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        expected = hf_model(input_ids=ids).logits
    torch.testing.assert_close(run_graph(gm, ids), expected, rtol=1e-5, atol=1e-5)


def test_pickle_needs_trust_flag(tmp_path):
    path = tmp_path / "whole.pt"
    model = build_builtin("gpt2-tiny{n_layer=1}")
    torch.save(model, path)
    with pytest.raises(AeroError, match="pickle runs arbitrary code.*--trust-pickle"):
        ac.load_model(str(path))
    loaded, ids = ac.load_model(str(path), trust_pickle=True), torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


class DataDependentModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(8, 4)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        if x.sum() > 0:  # control flow on a value: neither export nor symbolic tracing can capture it
            return x * 2
        return x


def test_model_that_fails_to_export_says_why(capfd):
    with pytest.raises(AeroError, match="cannot capture the model: torch.export failed with .*"):
        ac.capture(DataDependentModel())
    assert capfd.readouterr().err == ""  # export's partial-graph dump is silenced: the error is one line


# One case in a fresh process (what a user's terminal shows: the exit status, nothing printed on import), the
# one whose refusal comes last (after loading and capture); the others reach the same main() in this process.
@pytest.mark.parametrize("args, message, fresh_process", [
    (["missing.pt"], "no such file or directory: 'missing.pt'", False),
    (["gpt9"], "unknown model 'gpt9'", False),
    (["gpt2-tiny", "--passes", "remove-layernorm,nope"], "unknown pass 'nope': known passes are", False),
    (["gpt2-tiny", "--seq-len", "4096"], "exceeds the model's context", True),
])
def test_bad_input_gives_one_line(args, message, fresh_process, tmp_path, capfd):
    out = tmp_path / "out.pt2"
    if fresh_process:
        code, stdout, stderr = run_cli(*args, "-o", str(out), "--no-cost")
    else:
        code = main([*args, "-o", str(out), "--no-cost"])
        stderr = capfd.readouterr().err
    assert code == 2, stderr  # a user error; an internal error (a bug) is also one line, but exits 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow  # a whole CLI run (several seconds): kept out of the fast core
def test_corrupt_and_pickled_files_on_the_command_line(tmp_path, capfd):
    # A fresh process for the refusals a user meets first (what the terminal shows); the rest in this one.
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive")
    code, _, stderr = run_cli(str(corrupt))
    assert code == 2 and "cannot read" in stderr and len(stderr.strip().splitlines()) == 1
    pickled = tmp_path / "whole.pt"
    torch.save(build_builtin("gpt2-tiny{n_layer=1}"), pickled)
    code, _, stderr = run_cli(str(pickled))
    assert code == 2 and "--trust-pickle" in stderr and "Traceback" not in stderr
    bad_pt = tmp_path / "corrupt.pt"
    bad_pt.write_bytes(b"\x80\x02garbage")
    assert main([str(bad_pt), "--arch", "gpt2-tiny"]) == 2
    stderr = capfd.readouterr().err
    assert "cannot read" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert main([str(pickled), "--trust-pickle", "--passes", "none", "--no-cost"]) == 0
    assert "layernorm" in capfd.readouterr().out


@pytest.mark.slow  # GPT-2 small, as a user's first run
def test_default_command_runs_gpt2_small(tmp_path):
    """`aero-compile` alone: GPT-2 small through `all`, no norm or activation left, same softmax count."""
    report_path = tmp_path / "r.json"
    code, stdout, stderr = run_cli("--report-json", str(report_path))
    assert code == 0, stderr
    assert "gpt2" in stdout and "softmax" in stdout
    report = json.loads(report_path.read_text())
    before, after = report["before"]["op_counts"], report["after"]["op_counts"]
    assert report["model"] == "gpt2" and before["layernorm"] == 25 and before["gelu"] == 12
    assert report["seq_len"] == 128 and before["linear"] == 49
    elements = report["before"]["op_elements"]
    assert elements["softmax"] == 12 * 12 * 128 * 128
    assert elements["layernorm"] == 25 * 128 * 768
    assert elements["gelu"] == 12 * 128 * 3072
    for kind in ("layernorm", "rmsnorm", "gelu", "relu", "silu"):
        assert after.get(kind, 0) == 0
    assert after["softmax"] == before["softmax"] == 12
    assert after["linear"] < before["linear"]
