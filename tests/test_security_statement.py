"""The security block every measured record carries, and the link options' rules (one shared function)."""

import pytest

from aero_compile.errors import AeroError
from aero_compile.targets.private.security import insecure_summary, link_mode, security_block


@pytest.mark.parametrize("engine, provider, secure", [("crypten", "tfp", False), ("crypten", "ttp", True),
                                                      ("spu", "semi2k", False), ("spu", "cheetah", True),
                                                      ("spu", "aby3", True)])
def test_the_provider_decides_provider_secure(engine, provider, secure):
    block = security_block(engine=engine, provider=provider, hosts="loopback")
    assert block["provider_secure"] is secure and block["tls"] is False
    assert (insecure_summary(block) is None) == secure


def test_tls_and_insecure_links_are_stated():
    assert security_block(engine="spu", provider="cheetah", hosts="tls")["tls"] is True
    insecure = security_block(engine="spu", provider="cheetah", hosts="insecure")
    assert insecure["tls"] is False and any(n.startswith("--insecure-link") for n in insecure["notes"])
    assert insecure_summary(insecure) == "not secure: --insecure-link: links are plaintext and unauthenticated"
    both = insecure_summary(security_block(engine="crypten", provider="tfp", hosts="insecure"))
    assert both.startswith("not secure: provider tfp") and "--insecure-link" in both and "\n" not in both


@pytest.mark.parametrize("multihost, tls, insecure, expected", [
    (False, None, False, "loopback"), (True, "keys", False, "tls"), (True, None, True, "insecure")])
def test_link_mode(multihost, tls, insecure, expected):
    assert link_mode(multihost=multihost, tls=tls, insecure_link=insecure) == expected


@pytest.mark.parametrize("multihost, tls, insecure, message", [
    (True, None, False, "needs --tls DIR .*or --insecure-link"),
    (True, "keys", True, "contradict"),
    (False, "keys", False, "--tls on one machine is CrypTen's"),
    (False, None, True, "--insecure-link applies to runs between hosts"),
])
def test_link_mode_refusals(multihost, tls, insecure, message):
    with pytest.raises(AeroError, match=message):
        link_mode(multihost=multihost, tls=tls, insecure_link=insecure)


def _spu_party(*extra):
    return ["gpt2-tiny{n_layer=1}", "--passes", "none", "--no-cost", "--run-private", "--engine", "spu",
            "--spu-protocol", "semi2k", "--spu-party", "1", "--spu-addresses", "127.0.0.1:1,127.0.0.1:2",
            "--private-seq-len", "4", "--seq-len", "4", "--party-timeout", "2", *extra]


@pytest.mark.spu
@pytest.mark.parametrize("extra, message", [
    ([], "a run between hosts needs --tls DIR (make one with `aero-compile keys DIR`), or --insecure-link to run "
         "without authentication or encryption"),
    (["--tls", "/nonexistent/keys"], "--tls /nonexistent/keys: no such folder (make one with `aero-compile keys "
                                     "/nonexistent/keys`)"),
    (["--tls", "K", "--insecure-link"], "--tls and --insecure-link contradict each other: keep one"),
])
def test_an_spu_party_refuses_to_start_without_a_link_decision(capsys, monkeypatch, extra, message):
    from aero_compile.cli import main

    monkeypatch.setattr("aero_compile.loader.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    assert main(_spu_party(*extra)) == 2
    assert capsys.readouterr().err.strip() == f"aero-compile: error: {message}"


@pytest.mark.spu
def test_a_single_machine_spu_run_refuses_link_options(capsys):
    from aero_compile.cli import main

    argv = [a for a in _spu_party("--insecure-link") if a not in ("--spu-party", "1")]
    argv = argv[:argv.index("--spu-addresses")] + argv[argv.index("--spu-addresses") + 2:]
    assert main(argv) == 2
    assert "--insecure-link applies to runs between hosts" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ([], "a run between hosts needs --tls DIR"),
    (["--tls", "K"], "--tls K: missing K/ca.pem"),
])
def test_a_crypten_party_refuses_to_start_without_a_link_decision(capsys, monkeypatch, extra, message):
    from aero_compile.cli import main

    monkeypatch.setattr("aero_compile.loader.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "RENDEZVOUS": "tcp://127.0.0.1:1",
                        "DISTRIBUTED_BACKEND": "gloo"}.items():
        monkeypatch.setenv(name, value)
    assert main(["gpt2-tiny", "--run-private", "--party", "--no-cost", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"aero-compile: error: {message}") and "\n" not in err

