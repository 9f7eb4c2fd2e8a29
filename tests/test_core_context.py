"""The context bound comes from the model itself, wherever it is recorded.

Config fields of any name families use, a .pt2's range constraints, the rows of a learned position
table; beyond it a run stops with one line, exit 2, before the pass manager copies or runs anything.
"""

import types

import pytest
import torch

import aero_compile as ac
from aero_compile.capturing import config_context, export_program
from aero_compile.cli import main
from aero_compile.graph_info import graph_info
from aero_compile.targets.pt2 import save_pt2


class _Tiny(torch.nn.Module):
    """Embedding and head; a config only when given one; positions from a learned table when ``positions``."""

    def __init__(self, config=None, positions: int | None = None, vocab: int = 16, width: int = 8):
        super().__init__()
        if config is not None:
            self.config = config
        self.embed = torch.nn.Embedding(vocab, width)
        self.positions = torch.nn.Embedding(positions, width) if positions else None
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        if self.positions is not None:
            x = x + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))
        return self.head(x)


@pytest.mark.parametrize("field", ["max_seq_len", "n_ctx", "seq_length", "max_sequence_length", "n_positions",
                                   "block_size", "max_position_embeddings", "context_length"])
def test_config_fields_of_any_name_give_the_context(field):
    config = types.SimpleNamespace(**{field: 32, "max_length": 20, "hidden_size": 8})  # max_length: generation
    assert config_context(types.SimpleNamespace(config=config)) == 32


def test_hugging_face_config_names(captured):
    from transformers import AutoConfig

    mpt = AutoConfig.for_model("mpt", max_seq_len=48, d_model=16, n_heads=2, n_layers=1, vocab_size=32)
    assert config_context(types.SimpleNamespace(config=mpt)) == 48  # MPT names it max_seq_len
    gpt2 = AutoConfig.for_model("gpt2", n_positions=40, n_ctx=40)
    assert config_context(types.SimpleNamespace(config=gpt2)) == 40


def test_capture_reads_a_config_under_another_name_and_refuses_beyond_it(capsys):
    gm = ac.capture(_Tiny(types.SimpleNamespace(max_seq_len=24)), name="tiny")
    assert graph_info(gm).max_seq_len == 24
    with pytest.raises(ac.AeroError, match=r"^the analysed sequence length 32 exceeds the model's context of 24"):
        ac.PassManager.from_pipeline("none", seq_len=32).run(gm)


def test_a_learned_position_table_bounds_the_context():
    gm = ac.capture(_Tiny(positions=12), name="positions")
    assert graph_info(gm).max_seq_len == 12
    assert graph_info(ac.capture(_Tiny(), name="none")).max_seq_len is None  # nothing states a bound


def test_a_pt2_states_its_context_in_its_range_constraints(tmp_path, capsys, captured):
    gm = captured("gpt2-tiny")
    path = tmp_path / "gpt2-tiny.pt2"  # as torch.export writes it: export inferred the bound (256) itself
    torch.export.save(export_program(gm, torch.zeros(2, 8, dtype=torch.long)), str(path))
    assert graph_info(ac.capture(str(path))).max_seq_len == 256
    assert main([str(path), "--passes", "none", "--seq-len", "300", "--no-cost"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("aero-compile: error: the analysed sequence length 300 exceeds the model's context of 256: "
                   "use a smaller --seq-len")


@pytest.mark.slow  # a whole CLI run (several seconds): kept out of the fast core
def test_a_rotary_model_written_by_aero_compile_keeps_its_context(tmp_path, captured):
    """Llama's graph does not bound the sequence (rotary positions): save_pt2 records the config's bound."""
    path = tmp_path / "llama-tiny.pt2"
    save_pt2(captured("llama-tiny"), path)
    assert graph_info(ac.capture(str(path))).max_seq_len == 256
