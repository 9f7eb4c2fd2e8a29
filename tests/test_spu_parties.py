"""SPU parties as separate OS processes over loopback (SPU's brpc link) and the CLI that starts them.

semi2k: the same link, processes and lowering as cheetah, in a fraction of the time."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from aero_compile.capturing import example_input
from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.targets.spu.party import run_parties
from aero_compile.targets.spu.runner import program_for
from aero_compile.targets.spu.simulator import simulate

pytestmark = [pytest.mark.spu, pytest.mark.slow]  # SPU parties as separate processes

SEQ_LEN = 8


@pytest.fixture(scope="module")
def program(rewritten_all):
    after = rewritten_all("gpt2-tiny")
    return program_for(after, 1, SEQ_LEN)


def test_two_processes_give_the_simulators_logits_and_bytes(program):
    ids = example_input(program.gm, seq_len=SEQ_LEN)
    simulated, sim_profiles = simulate([program.executable], [program.client_inputs(ids) + program.owner_inputs()], "semi2k")
    logits, profiles = run_parties({"after": program}, ids, protocol="semi2k", timeout_s=60)
    # fresh random shares on each side: equal to fixed-point error (2^-18 per truncation), not bit for bit
    assert np.abs(np.asarray(logits[0]) - np.asarray(simulated[0])).max() < 1e-4
    assert profiles[1]["bytes"] == sim_profiles[1]["bytes"] and profiles[1]["rounds"] == sim_profiles[1]["rounds"]
    assert profiles[1]["by_op"].keys() == sim_profiles[1]["by_op"].keys()


# Each party counts its timeout from its own start, so process start-up is not in it. Where both parties
# must connect first (the death after connecting), 10 s leaves room for one starting late on a loaded
# machine; the absent owner is waited for the whole timeout, so a short one keeps that case quick.
@pytest.mark.parametrize("fault,timeout_s,message", [
    ({1: "exit-after-connect"}, 10, r"private run failed: client \(rank 1\) died after [\d.]+ s \(exit code 3\)"),
    ({0: "absent"}, 3, r"private run failed: client \(rank 1\) failed after [\d.]+ s: could not reach the model owner "
                       r"at 127\.0\.0\.1:\d+ within 3 s"),
])
def test_a_dead_or_missing_party_ends_the_run_in_one_line_naming_it(program, fault, timeout_s, message):
    ids = example_input(program.gm, seq_len=SEQ_LEN)
    started = time.monotonic()
    with pytest.raises(AeroError, match=message) as error:
        run_parties({"after": program}, ids, protocol="semi2k", timeout_s=timeout_s, fault=fault)
    assert "\n" not in str(error.value)
    assert time.monotonic() - started < timeout_s + 25  # the timeout, plus starting the processes and the grace


def test_cli_engine_spu_fills_the_measured_block(tmp_path):
    report = tmp_path / "r.json"
    run = subprocess.run([sys.executable, "-m", "aero_compile", "gpt2-tiny", "--passes", "all", "--run-private",
                          "--engine", "spu", "--spu-protocol", "semi2k", "--seq-len", str(SEQ_LEN),
                          # one timed run a graph: what is checked (agreement, bytes) is the first run's anyway
                          "--private-repetitions", "1", "--report-json", str(report)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(report.read_text())["measured"]
    for stage in ("before", "after"):
        m = measured[stage]
        assert (m["engine"], m["protocol"], m["mode"]) == ("spu", "semi2k", "processes")
        assert m["argmax_agreement_resolvable"] >= 0.99 and m["bytes"] > 0
        assert m["security"]["tls"] is False and m["security"]["provider_secure"] is False  # loopback; TFP triples
    assert measured["after"]["bytes"] < measured["before"]["bytes"]
    assert "measured under SPU semi2k" in run.stdout
    assert "not secure: SPU semi2k: triples from a trusted first party" in run.stdout


def test_cli_rejects_a_mismatched_spu_profile(capsys):
    # in this process: the one-line error and exit status of a CLI subprocess are the test above's and
    # tests/test_spu_multihost.py's; what is checked here is the option check itself
    assert main(["gpt2-tiny{n_layer=1}", "--passes", "none", "--seq-len", "8", "--run-private", "--engine", "spu",
                 "--spu-protocol", "semi2k", "--protocol", "spu-cheetah"]) == 2
    assert capsys.readouterr().err.strip() == ("aero-compile: error: --protocol spu-cheetah prices another SPU "
                                               "protocol than --spu-protocol semi2k: use --protocol spu-semi2k")


def test_crypten_party_mode_under_spu_names_the_spu_options():
    from aero_compile.cli import build_parser
    from aero_compile.targets.spu.cli_extension import check

    args = build_parser().parse_args(["gpt2-tiny", "--run-private", "--engine", "spu", "--party"])
    with pytest.raises(AeroError) as error:
        check(args)  # refused before anything runs
    assert str(error.value) == ("--party is CrypTen's multi-host mode; for SPU parties on separate hosts use "
                                "--spu-party RANK --spu-addresses HOST:PORT,... (docs/private-spu.md)")
