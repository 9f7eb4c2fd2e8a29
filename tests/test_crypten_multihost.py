"""Multi-host mode on loopback: each party is its own `aero-compile --party` process, configured by env."""

import os
import socket
import subprocess
import sys
import time

import re

import pytest
import torch

from aero_compile.capturing import run_graph
from aero_compile.errors import AeroError
from aero_compile.targets.crypten.multihost import REQUIRED_ENVIRONMENT, party_rank

pytestmark = [pytest.mark.crypten, pytest.mark.slow]  # parties as separate aero-compile processes

# --seq-len/--no-cost: the analyzer's report at T=128 is not what these tests are about (each party ran it)
COMMAND = [sys.executable, "-m", "aero_compile", "gpt2-tiny", "--passes", "all", "--run-private", "--party",
           "--private-seq-len", "4", "--seq-len", "4", "--no-cost"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int, host: str = "127.0.0.1") -> dict:
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "RENDEZVOUS": f"tcp://{host}:{port}",
            "DISTRIBUTED_BACKEND": "gloo", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.mark.parametrize("provider, tls", [("tfp", False), ("tfp", True), (None, True)])
def test_two_separately_started_parties_run_privately(tmp_path, captured, rewritten_all, provider, tls):
    """Between hosts the provider is ttp by default (secure): a third process, the dealer, deals the triples;
    with --tls every link (the dealer's too) is mutual TLS with the certificates `aero-compile keys` writes,
    and the model owner sits at a loopback address of its own (127.0.0.2) as a second host would."""
    port = _free_port()
    logits_path = tmp_path / "logits.pt"
    if tls:
        from aero_compile.targets.private.keys import write_keys

        write_keys(tmp_path / "keys")
    link = ["--tls", str(tmp_path / "keys")] if tls else ["--insecure-link"]
    host = "127.0.0.2" if tls else "127.0.0.1"
    command = COMMAND + link + (["--crypten-provider", provider] if provider else [])
    owner = subprocess.Popen(command + ["--report-json", str(tmp_path / "owner.json")], env=_env(0, port, host),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = subprocess.Popen(command + ["--private-logits-out", str(logits_path)], env=_env(1, port, host),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dealer = [subprocess.Popen(command, env=_env(2, port, host), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)] if provider != "tfp" else []
    try:
        for process in (owner, client, *dealer):
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err[-2000:]
    finally:
        for process in (owner, client, *dealer):
            process.kill()
    saved = torch.load(logits_path, weights_only=False)
    before = captured("gpt2-tiny")
    after = rewritten_all("gpt2-tiny")
    for name, gm in (("before", before), ("after", after)):
        plain = run_graph(gm, saved["input_ids"])
        assert (saved[name] - plain).abs().max() < 0.02
    import json

    measured = json.loads((tmp_path / "owner.json").read_text())["measured"]
    assert measured["after"]["rounds"] < measured["before"]["rounds"]
    assert measured["before"]["role"] == "model owner" and measured["before"]["provider"] == (provider or "ttp")
    assert measured["before"]["tls"] is tls and measured["after"]["security"]["tls"] is tls
    assert measured["after"]["security"]["provider_secure"] is (provider != "tfp")


def test_a_multihost_party_needs_tls_or_insecure_link():
    result = subprocess.run(COMMAND, env=_env(0, _free_port()), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "aero-compile: error: a run between hosts needs --tls DIR (make one with `aero-compile keys DIR`), "
        "or --insecure-link to run without authentication or encryption"]


def test_a_party_whose_peer_never_connects_fails_within_the_timeout():
    started = time.monotonic()
    result = subprocess.run(COMMAND + ["--party-timeout", "3", "--passes", "none", "--no-cost", "--insecure-link"],
                            env=_env(1, _free_port()), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    # one line, nothing else (no C++ stack frames from gloo), naming the party and the real wait
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-2000:]
    match = re.fullmatch(r"aero-compile: error: client \(rank 1\) waited ([\d.]+) s for its peers "
                         r"\(--party-timeout 3 s\), [\d.]+ s after it started: no peer connected at tcp://\S+",
                         result.stderr.strip())
    assert match and 3 <= float(match.group(1)) < 4.5, result.stderr
    assert time.monotonic() - started < 90


@pytest.mark.parametrize("env, message", [
    ({}, "--party needs the environment variables RANK, WORLD_SIZE, RENDEZVOUS, DISTRIBUTED_BACKEND"),
    ({"RANK": "0", "WORLD_SIZE": "3", "RENDEZVOUS": "tcp://h:1", "DISTRIBUTED_BACKEND": "gloo"}, "WORLD_SIZE must be 2"),
    ({"RANK": "2", "WORLD_SIZE": "2", "RENDEZVOUS": "tcp://h:1", "DISTRIBUTED_BACKEND": "gloo"}, "RANK must be between 0 and 1"),
    ({"RANK": "x", "WORLD_SIZE": "2", "RENDEZVOUS": "tcp://h:1", "DISTRIBUTED_BACKEND": "gloo"}, "RANK must be an integer"),
])
def test_party_environment_errors_name_the_fix(monkeypatch, env, message):
    for name in REQUIRED_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AeroError, match=re.escape(message)):
        party_rank("tfp")


@pytest.mark.parametrize("extra, message", [
    (["--private-seq-len", "0"], "--private-seq-len must be a positive integer, got 0"),
    (["--private-seq-len", "100000"], "--private-seq-len 100000 exceeds the model's context of 256"),
    (["--protocol", "bumblebee"], "--run-private runs CrypTen: use --protocol crypten, not bumblebee"),
])
def test_run_private_bad_options_are_one_line_errors(capsys, extra, message):
    from aero_compile.cli import main

    assert main(["gpt2-tiny", "--passes", "none", "--run-private", *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"aero-compile: error: {message}"


@pytest.mark.slow
@pytest.mark.parametrize("forgery, reason", [
    ("another CA", "unknown ca"),  # the impostor already refuses the owner's certificate: its alert ends the handshake
    ("the dealer's certificate", "its certificate names dealer, not the role 'client'"),
])
def test_an_impostor_client_is_refused_by_the_owner_in_one_line(tmp_path, forgery, reason):
    """A process that joins as the client with a certificate of another CA, or with the dealer's valid one, is
    refused by the owner in one line naming the reason (exit 2); neither process outlives the refusal."""
    import shutil

    from aero_compile.targets.private.keys import write_keys

    keys = write_keys(tmp_path / "keys")
    if forgery == "another CA":
        forged = write_keys(tmp_path / "forged")
    else:
        forged = tmp_path / "forged"
        shutil.copytree(keys, forged)
        for name in ("cert.pem", "key.pem"):
            shutil.copy(forged / "dealer" / name, forged / "client" / name)
    port = _free_port()
    command = COMMAND + ["--crypten-provider", "tfp", "--party-timeout", "60"]
    owner = subprocess.Popen(command + ["--tls", str(keys)], env=_env(0, port), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    impostor = subprocess.Popen(command + ["--tls", str(forged)], env=_env(1, port), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        _, owner_err = owner.communicate(timeout=180)
        _, impostor_err = impostor.communicate(timeout=60)
    finally:
        owner.kill()
        impostor.kill()
    assert owner.returncode == 2, owner_err[-2000:]
    lines = owner_err.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and reason in lines[0], owner_err[-2000:]
    assert impostor.returncode == 2 and len(impostor_err.strip().splitlines()) == 1, impostor_err[-2000:]
