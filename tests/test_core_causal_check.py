"""Only causal decoders are compiled; anything else is refused in one line, before any pass."""

import pytest
import torch

import aero_compile as ac
from aero_compile.capturing import check_causal_decoder
from aero_compile.cli import main
from aero_compile.errors import AeroError


def _save(model_type: str, directory, **config):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    with torch.random.fork_rng():
        torch.manual_seed(0)
        settings = AutoConfig.for_model(model_type, **config)
        auto = AutoModelForMaskedLM if model_type == "bert" else AutoModelForCausalLM
        auto.from_config(settings).save_pretrained(directory)
    return str(directory)


def test_a_masked_lm_directory_is_refused_as_not_causal(tmp_path, capsys):
    bert = _save("bert", tmp_path / "bert", num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                 intermediate_size=32, vocab_size=64, max_position_embeddings=32)
    capsys.readouterr()  # save_pretrained's progress bar
    assert main([bert, "--passes", "all", "--no-cost", "-o", str(tmp_path / "bert.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aero-compile: error: 'bert' (BertLMHeadModel) is not a causal decoder: changing the "
                          "last token changes the logits at earlier positions") and "\n" not in err
    assert not (tmp_path / "bert.pt2").exists()


def test_a_state_space_model_is_named_unsupported_before_any_pass(tmp_path, capsys):
    mamba = _save("mamba", tmp_path / "mamba", num_hidden_layers=1, hidden_size=16, state_size=4, vocab_size=64)
    capsys.readouterr()
    assert main([mamba, "--passes", "all", "--no-cost"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aero-compile: error: unsupported architecture 'mamba' (MambaForCausalLM): its captured "
                          "graph does not run on 6 tokens") and "\n" not in err
    assert "pass '" not in err  # not blamed on a pass


def test_the_causality_check_passes_decoders_and_catches_a_look_ahead(captured):
    for name in ("gpt2-tiny", "llama-tiny", "pythia-tiny"):
        check_causal_decoder(captured(name), name)

    class LookAhead(torch.nn.Module):  # position i sees the sum over the whole sequence
        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)

        def forward(self, input_ids):
            x = self.embed(input_ids)
            return self.head(x + x.mean(dim=1, keepdim=True))

    with pytest.raises(AeroError, match=r"^'look-ahead' \(LookAhead\) is not a causal decoder"):
        ac.capture(LookAhead(), name="look-ahead")
