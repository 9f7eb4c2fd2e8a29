"""Bad input is refused in one line with exit status 2, before the work it would spoil.

Each case runs ``aero_compile.cli.main`` in this process with the loader, capture and the pass manager
replaced by recorders, so "before capture" and "before any pass" are checked by what was called, not
by timing.
"""

from __future__ import annotations

import importlib

import pytest

from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.pass_manager import PASSES, known_pass_names
from aero_compile.pass_options import Option


@pytest.fixture
def stages(monkeypatch):
    """The stages of a run that were reached: "load", "capture", "passes" (the passes never run here)."""
    reached: list[str] = []
    loader = importlib.import_module("aero_compile.loader")
    capture_module = importlib.import_module("aero_compile.capturing")
    manager = importlib.import_module("aero_compile.pass_manager")
    real_load, real_capture = loader.load_model, capture_module.capture

    def load(*args, **kwargs):
        reached.append("load")
        return real_load(*args, **kwargs)

    def capture(*args, **kwargs):
        reached.append("capture")
        return real_capture(*args, **kwargs)

    def run_passes(self, gm):
        reached.append("passes")
        raise AssertionError("a pass ran: the bad input should have been refused before")

    monkeypatch.setattr(loader, "load_model", load)
    monkeypatch.setattr(capture_module, "capture", capture)
    monkeypatch.setattr(manager.PassManager, "run", run_passes)
    return reached


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aero-compile: error: ")
    return lines[0]


BEFORE_LOADING = [
    (["--bandwidth-mbps", "0"], "--bandwidth-mbps must be a positive number of Mbit/s, got 0"),
    (["--bandwidth-mbps", "inf"], "--bandwidth-mbps must be a positive number of Mbit/s, got inf"),
    (["--rtt-ms", "-5"], "--rtt-ms must be a non-negative number of milliseconds, got -5"),
    (["--network", "moon"], "unknown network 'moon'"),
    (["--batch", "0"], "--batch must be a positive integer, got 0"),
    (["--seq-len", "0"], "--seq-len must be a positive integer, got 0"),
    (["--calibrate", "0"], "--calibrate must be a number of sequences in [1, 1024], got 0"),
    (["--protocol", "nope"], "nope"),
    (["--plot", "x.txt"], "--plot writes an image"),
    (["--run-private", "--private-seq-len", "0"], "--private-seq-len must be a positive integer, got 0"),
    (["--run-private", "--party-timeout", "-1"], "--party-timeout must be a positive number of seconds, got -1"),
    (["--run-private", "--party-timeout", "0"], "--party-timeout must be a positive number of seconds, got 0"),
    (["--run-private", "--protocol", "bumblebee"], "--run-private runs CrypTen: use --protocol crypten, not bumblebee"),
    (["--run-private", "--engine", "spu", "--protocol", "crypten"],
     "--run-private runs SPU: use --protocol spu-cheetah, not crypten"),
    (["--run-private", "--engine", "spu", "--tune-protocol"],
     "--tune-protocol is an option of --engine crypten, but this run's engine is spu"),
    (["--run-private", "--crypten-provider", "ttp", "--engine", "spu"],
     "--crypten-provider is an option of --engine crypten, but this run's engine is spu"),
    (["--run-private", "--spu-protocol", "semi2k"],
     "--spu-protocol is an option of --engine spu, but this run's engine is crypten"),
    (["--engine", "spu"], "--engine spu selects the engine of --run-private: add --run-private"),
    (["--tune-protocol"], "--tune-protocol tunes a private run: add --run-private"),
    (["--run-private", "--tune-protocol", "--tls", "keys"], "--tune-protocol measures settings over bare loopback"),
    (["--run-private", "--tune-protocol", "--network", "wan"], "--tune-protocol measures on bare loopback"),
    (["--run-private", "--private-repetitions", "0"], "--private-repetitions must be a positive integer, got 0"),
    (["--run-private", "--insecure-link"], "--insecure-link applies to runs between hosts"),
    (["--run-private", "--engine", "spu", "--tls", "keys"], "--tls on one machine is CrypTen's"),
    (["--run-private", "--engine", "spu", "--spu-party", "0"], "--spu-party and --spu-addresses go together"),
    (["--run-private", "--engine", "spu", "--spu-party", "5", "--spu-addresses", "a:1,b:2"],
     "--spu-party must be a rank between 0 and 1, got 5"),
    (["--run-private", "--engine", "spu", "--spu-party", "0", "--spu-addresses", "a:1"],
     "--spu-addresses needs 2 host:port addresses"),
    (["--passes", "linearize-heads{uniform_tol=2}"], "pass 'linearize-heads': uniform_tol must be a number in [0, 1] nats, not 2"),
    (["--passes", "linearize-heads{calibrate=0}"], "pass 'linearize-heads': calibrate must be an integer in [1, 1024]"),
    (["--passes", "softmax-no-max{bound=1e9}"], "pass 'softmax-no-max': bound must be a number in [-1000, 1000]"),
    (["--passes", "softmax-to-quad{c=0}"], "pass 'softmax-to-quad': c must be non-zero"),
    (["--emit", "onnx"], "--emit onnx needs -o PATH.onnx"),
]


@pytest.mark.parametrize("options, message", BEFORE_LOADING, ids=[" ".join(o) for o, _ in BEFORE_LOADING])
def test_refused_before_the_model_is_loaded(options, message, stages, capsys):
    line = _refused(["gpt2-tiny", *options], capsys)
    assert message in line
    assert stages == []  # no model loaded, nothing captured, no pass run


@pytest.mark.parametrize("model, message", [
    ("gpt2{n_embd=65,n_head=4}", "GPT-2 config: n_embd (65) must be a multiple of n_head (4)"),
    ("gpt2-tiny{n_head=0}", "GPT-2 config: n_head must be a positive integer, got 0"),
    ("gpt2-tiny{dropout=2}", "GPT-2 config: dropout must be a number in [0, 1), got 2"),
    ("llama-tiny{hidden_size=65,num_attention_heads=4}", "cannot build 'llama-tiny{hidden_size=65"),
])
def test_impossible_model_configs_are_refused_before_capture(model, message, stages, capsys):
    line = _refused([model, "--passes", "none"], capsys)
    assert message in line
    assert "capture" not in stages and "passes" not in stages


@pytest.mark.parametrize("options, message", [
    (["--run-private", "--private-seq-len", "100000"], "--private-seq-len 100000 exceeds the model's context of 256"),
    (["--run-private", "--engine", "spu", "--private-seq-len", "100000"],
     "--private-seq-len 100000 exceeds the model's context of 256"),
])
def test_what_needs_the_graph_is_refused_right_after_capture(options, message, stages, capsys):
    line = _refused(["gpt2-tiny", "--passes", "all", *options], capsys)
    assert message in line
    assert stages == ["load", "capture"]  # captured, and no pass ran


def test_every_numeric_pass_option_has_a_range():
    known_pass_names()
    unbounded = [f"{name}{{{key}}}" for name, info in PASSES.items() for key, spec in info.schema.items()
                 if isinstance(spec, Option) and spec.type in (int, float) and not spec.choices
                 and (spec.min is None or (spec.max is None and spec.limit is None))]
    assert unbounded == []


def test_engine_registry_lists_each_engine_once_with_its_parts():
    from aero_compile.targets.private.engines import ENGINES, Engine, register_engine

    assert set(ENGINES) == {"crypten", "spu"}
    assert ENGINES["crypten"].profiles == ("crypten",)
    assert all(p.startswith("spu-") for p in ENGINES["spu"].profiles)
    for engine in ENGINES.values():  # every part resolves, without running anything
        assert callable(engine.cli_module().run) and callable(engine.cli_module().check)
    with pytest.raises(ValueError, match="registered twice"):
        register_engine(Engine("spu", "SPU", "", "", "", "", ()))


def test_unknown_calibration_engine_names_the_registered_ones(capsys):
    line = _refused(["calibrate", "nope"], capsys)
    assert "cannot calibrate 'nope': engines are crypten, spu" in line


def test_the_core_cli_reads_no_extension_option_by_probing():
    import inspect

    import aero_compile.cli as cli

    source = inspect.getsource(cli)
    for option in ("protocol", "network", "bandwidth_mbps", "rtt_ms", "batch", "no_cost", "engine", "run_private"):
        assert f'getattr(args, "{option}"' not in source and f"args.{option}" not in source, option


def test_model_config_errors_are_aero_errors():
    from aero_compile.models.gpt2 import GPTConfig

    with pytest.raises(AeroError, match="n_embd"):
        GPTConfig(n_embd=65, n_head=4)
