"""The CLI's outputs: checked up front, written together or not at all; Ctrl-C is one line at any moment;
``train --out`` keeps a previous run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aero_compile.cli import main
from aero_compile.training.config import TrainConfig

MISSING_MODEL = "./no-such-model.pt2"  # had the CLI loaded the model first, the error would name it


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_an_unwritable_report_place_fails_first_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main([MISSING_MODEL, "-o", str(out), "--report-json", "/proc/aero-nowhere/r.json"]) == 2
    assert _one_error(capsys) == ("aero-compile: error: --report-json '/proc/aero-nowhere/r.json': cannot write in "
                                  "'/proc' (No such file or directory)")
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_directory_or_under_a_file_fails_first(tmp_path, capsys):
    (tmp_path / "taken.pt2").mkdir()
    assert main([MISSING_MODEL, "-o", str(tmp_path / "taken.pt2")]) == 2
    assert _one_error(capsys).endswith(f"-o '{tmp_path / 'taken.pt2'}' is a directory: give a file name")
    (tmp_path / "file").write_text("x")
    assert main([MISSING_MODEL, "--report-json", str(tmp_path / "file" / "r.json")]) == 2
    assert _one_error(capsys).endswith(f"'{tmp_path / 'file'}' is not a directory")
    assert main([MISSING_MODEL, "-o", str(tmp_path / "same.pt2"), "--report-json", str(tmp_path / "same.pt2")]) == 2
    assert "name the same file" in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.pt2"]


def test_a_late_failure_writes_none_of_the_outputs(tmp_path, capsys, monkeypatch):
    import aero_compile.fileio as fileio

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio, "write_json_atomic", fail)  # the report is the last file written
    argv = ["gpt2-tiny{n_layer=1}", "--passes", "all", "--no-cost", "--seq-len", "16",
            "-o", str(tmp_path / "sub" / "m.pt2"), "--report-json", str(tmp_path / "r.json")]
    assert main(argv) == 1
    assert "No space left on device" in _one_error(capsys)
    assert list(tmp_path.iterdir()) == []  # no model, no stage, not even the folder -o would have made
    monkeypatch.undo()
    assert main(argv) == 0
    assert (tmp_path / "sub" / "m.pt2").is_file() and (tmp_path / "r.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "sub"]


def _wait_until_torch_loads(process, timeout_s: float = 120) -> None:
    """Until the child maps torch's library: by then aero_compile.cli, which installs the Ctrl-C handling,
    has run. A Ctrl-C before it (interpreter start-up, which takes more than 0.3 s on a loaded machine) is
    Python's own and no program can catch it, so the test does not send one there."""
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:  # no /proc here: fall back to the plain delay
            return
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [0.3, 2.5, pytest.param(5.0, marks=pytest.mark.slow)])
def test_ctrl_c_at_any_moment_is_one_line_exit_130_and_nothing_written(tmp_path, delay):
    """0.3 s falls in ``import torch`` (the interrupt is held until it is done: an interrupted
    extension import could crash the interpreter); later ones in loading, capture or the passes."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "aero_compile", "gpt2-tiny", "--passes", "all",
                                "-o", str(tmp_path / "m.pt2"), "--report-json", str(tmp_path / "r.json")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    _wait_until_torch_loads(process)
    time.sleep(max(0.0, delay - (time.monotonic() - started)))
    if process.poll() is not None:
        pytest.skip(f"the run finished within {delay} s")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:  # the interrupt came after the outputs were committed: they are whole
        assert delay > 1.0 and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "r.json"], err
        json.loads((tmp_path / "r.json").read_text())
        return
    assert process.returncode == 130, err
    assert err.strip() == "aero-compile: interrupted; nothing written"
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_non_empty_out_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # a previous run's file
    assert main(["train", "gpt2-tiny", "--out", str(out), "--steps", "1"]) == 2
    assert _one_error(capsys) == (f"aero-compile: error: --out '{out}' is not empty (a previous run's files would be "
                                  "overwritten): pass --resume to continue that run, --overwrite to replace its "
                                  "files, or another --out")
    assert (out / "metrics.json").read_text() == "{}"
    TrainConfig(out_dir=str(out), overwrite=True).validate()
    TrainConfig(out_dir=str(out), resume="auto").validate()
    TrainConfig(out_dir=str(tmp_path / "fresh")).validate()
    (tmp_path / "empty").mkdir()
    TrainConfig(out_dir=str(tmp_path / "empty")).validate()
