"""Client-side sampling (--temperature, --top-k, --sample-seed) and who may be given the prompt between hosts."""

import os
import re

import pytest
import torch

from aero_compile.cli import main
from aero_compile.generation.sampling import Sampling


def test_greedy_is_the_argmax_and_the_default():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert Sampling().greedy and Sampling().picker()(logits) == 1
    assert Sampling().record() == {"method": "greedy"}


def test_sampling_is_reproducible_and_stays_in_the_top_k():
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))
    sampling = Sampling(temperature=3.0, top_k=5, seed=7)
    first, again = sampling.picker(), sampling.picker()
    draws = [first(logits) for _ in range(300)]
    assert draws == [again(logits) for _ in range(300)]  # a fresh picker starts from the seed again
    assert set(draws) <= set(logits.topk(5).indices.tolist())
    assert len(set(draws)) > 1  # a high temperature over five candidates does draw more than one
    other = Sampling(temperature=3.0, top_k=5, seed=8).picker()
    assert [other(logits) for _ in range(300)] != draws
    assert Sampling(top_k=1, seed=3).picker()(logits) == int(logits.argmax())
    assert sampling.record() == {"method": "sample", "temperature": 3.0, "top_k": 5, "seed": 7}


def test_a_low_temperature_concentrates_on_the_argmax():
    logits = torch.tensor([1.0, 2.0, 1.5])
    pick = Sampling(temperature=0.01, seed=1).picker()
    assert {pick(logits) for _ in range(50)} == {1}


@pytest.mark.parametrize("extra, message", [
    (["--run-private", "--generate", "2", "--temperature", "0"], "--temperature must be a positive number, got 0"),
    (["--run-private", "--generate", "2", "--temperature", "-1"], "--temperature must be a positive number, got -1"),
    (["--run-private", "--generate", "2", "--temperature", "nan"], "--temperature must be a positive number, got nan"),
    (["--run-private", "--generate", "2", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--generate", "2", "--temperature", "0.8"], "--temperature sets how the client picks tokens in private generation"),
    (["--run-private", "--top-k", "4"], "--top-k sets how the client picks tokens in private generation"),
    (["--run-private", "--generate", "2", "--sample-seed", "3"], "--sample-seed seeds sampling: add --temperature"),
])
def test_bad_sampling_options_are_one_line_errors(capsys, extra, message):
    assert main(["gpt2-tiny", "--passes", "none", "--no-cost", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aero-compile: error: {message}"), err


def _party_env(monkeypatch, rank: int):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RENDEZVOUS", "tcp://127.0.0.1:9")  # nothing may connect: each refusal comes first
    monkeypatch.setenv("DISTRIBUTED_BACKEND", "gloo")


PARTY = ["gpt2-tiny", "--passes", "none", "--no-cost", "--run-private", "--party", "--insecure-link",
         "--party-timeout", "2"]


@pytest.mark.parametrize("rank, extra, message", [
    (0, ["--prompt-ids", "1,2"], "--prompt-ids is the client's alone, and this process is the model owner (RANK=0): "
                                 "drop --prompt-ids here and give it to the client (RANK=1) only"),
    (2, ["--prompt", "hello"], "--prompt is the client's alone, and this process is the trusted third party (RANK=2)"),
    (0, ["--generate", "2", "--temperature", "0.7"], "--temperature is the client's alone, and this process is the "
                                                     "model owner (RANK=0)"),
    (1, ["--generate", "2"], "the client of a generation between hosts brings the prompt: add --prompt TEXT or "
                             "--prompt-ids 1,2,3"),
    (1, ["--prompt-ids", ",".join(["1"] * 300)], "the prompt has 300 tokens but the model's context is 256"),
    (1, ["--generate", "200", "--prompt-ids", ",".join(["1"] * 100)], "--generate 200 after a 100-token prompt runs "
                                                                      "past the model's context of 256"),
])
def test_party_prompt_refusals_come_before_any_link(monkeypatch, capsys, rank, extra, message):
    """Refused in one line, exit 2, fast: nothing listens at RENDEZVOUS, so a party that tried to connect would
    instead wait its --party-timeout and say no peer connected."""
    _party_env(monkeypatch, rank)
    assert main([*PARTY, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aero-compile: error: {message}"), err
    assert "no peer" not in err[0] and "waited" not in err[0]


def test_a_prompt_without_generate_outside_a_party_run_is_still_refused(capsys):
    assert main(["gpt2-tiny", "--passes", "none", "--no-cost", "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"aero-compile: error: --prompt / --prompt-ids is the prompt of --generate N: add --generate "
                        r"N \(or run as the client of a multi-host run: --run-private --party or --spu-party 1\)", err), err


def test_the_announced_token_count_is_checked(monkeypatch):
    """What the client announces over the wire is checked on the owner: a non-count, a length past the context,
    or (without a prompt) a --private-seq-len other than the owner's, each one line."""
    from aero_compile.errors import AeroError
    from aero_compile.targets.crypten.party import client_token_count

    class Wire:
        def __init__(self, sent):
            self.sent = sent

        def broadcast_obj(self, obj, src):
            return self.sent

    assert client_token_count(Wire({"tokens": 5, "prompt": True}), 0, 8, True, 256) == 5
    with pytest.raises(AeroError, match="announced .* as its token count: refused"):
        client_token_count(Wire({"tokens": "5", "prompt": True}), 0, None, True, 256)
    with pytest.raises(AeroError, match="announced .* as its token count: refused"):
        client_token_count(Wire(["not", "a", "dict"]), 0, None, True, 256)
    with pytest.raises(AeroError, match="give every party the same --private-seq-len"):
        client_token_count(Wire({"tokens": 6, "prompt": False}), 0, 8, False, 256)
    with pytest.raises(AeroError, match="run past the model's context of 8"):
        client_token_count(Wire({"tokens": 6, "prompt": True}), 0, None, True, 8, new_tokens=4)


def test_the_client_prints_text_as_it_comes_through_its_tokenizer():
    """The multi-host client's echo: decoded text per graph when there is a tokenizer, else the ids."""
    import io

    from aero_compile.generation.echo import TextEcho
    from aero_compile.training.tokenizer import train_bpe

    tokenizer = train_bpe(["the cat sat on the mat", "a dog ran in the park"] * 20, 256)
    ids = tokenizer.encode("the cat ran in the park").ids
    stream = io.StringIO()
    echo = TextEcho(tokenizer, stream)
    for step, token in enumerate(ids):
        echo("before", step, token)
    echo("after", 0, ids[0])
    echo.end()
    lines = stream.getvalue().splitlines()
    assert lines == [f"before: {tokenizer.decode(ids)}", f"after: {tokenizer.decode(ids[:1])}"]
    plain = io.StringIO()
    ids_echo = TextEcho(None, plain)
    for step, token in enumerate([5, 7]):
        ids_echo("after", step, token)
    ids_echo.end()
    assert plain.getvalue() == "after: 5 7 \n"
