"""Prefill + decode-step programs derived from captured graphs: greedy decoding gives the logits of
re-running the whole sequence, per family, before and after the passes."""

import pytest
import torch
import torch.nn as nn

import aero_compile as ac
from aero_compile.generation import derive_programs
from aero_compile.generation.decoding import check_against_rerun, greedy_generate

QUAD_LENGTH = "all,softmax-to-quad{norm=length}"


def _prompt(length=7, vocab=256, seed=1):
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def _rewritten(captured, model, pipeline):
    gm = captured(model)
    return ac.PassManager.from_pipeline(pipeline).run(gm).graph_module if pipeline else gm


@pytest.mark.parametrize("pipeline", [None, "all", QUAD_LENGTH])
def test_gpt2_decode_matches_rerun(captured, pipeline):
    gm = _rewritten(captured, "gpt2-tiny", pipeline)
    programs = derive_programs(gm)
    check = check_against_rerun(gm, programs, _prompt(), new_tokens=5)
    assert len(check.tokens) == 5 and check.scale > 0
    assert len(programs.cache) == 4  # K and V of 2 layers


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hf-gpt2-tiny", "llama-tiny", "pythia-tiny"])
@pytest.mark.parametrize("pipeline", [None, "all", QUAD_LENGTH])
def test_families_decode_matches_rerun(captured, model, pipeline):
    gm = _rewritten(captured, model, pipeline)
    check_against_rerun(gm, derive_programs(gm), _prompt(), new_tokens=5)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["softmax-to-relu", "all,linearize-heads", "softmax-no-max", "all,fold-scales",
                                      "all,softmax-to-quad"])
def test_every_attention_form_decodes(captured, pipeline):
    gm = _rewritten(captured, "gpt2-tiny", pipeline)
    check_against_rerun(gm, derive_programs(gm), _prompt(), new_tokens=4)


def test_llama_cache_keeps_grouped_kv_heads(captured):
    programs = derive_programs(captured("llama-tiny"))
    logits, *cache = programs.prefill(_prompt(6))
    assert tuple(logits.shape) == (1, 1, 256)  # the last position only
    # each cached K or V holds 6 positions of 2 KV heads x 16 (32 numbers), not the 4 query heads' 64
    assert all(t.shape[0] == 1 and 6 in t.shape and t[0].numel() == 6 * 32 for t in cache), [t.shape for t in cache]


def test_prefill_runs_the_head_for_the_last_position_only(captured):
    programs = derive_programs(captured("gpt2-tiny"))
    logits, *cache = programs.prefill(_prompt(9))
    assert tuple(logits.shape) == (1, 1, 256) and all(t.shape[1] == 9 for t in cache)


def test_a_wrong_cache_is_caught(captured):
    """The check can fail: a decode step fed a cache that is off by one position disagrees."""
    gm = captured("gpt2-tiny")
    programs = derive_programs(gm)
    prompt = _prompt(6)
    tokens, step_logits = greedy_generate(programs, prompt, 2)
    _, *cache = programs.prefill(prompt[:, 1:])  # the cache of a shifted prompt
    wrong, *_ = programs.decode(torch.tensor([[tokens[0]]]), *cache)
    right, *_ = programs.decode(torch.tensor([[tokens[0]]]), *programs.prefill(prompt)[1:])
    assert torch.allclose(right[:, -1], step_logits[1], atol=1e-5)
    assert not torch.allclose(wrong[:, -1], step_logits[1], atol=1e-3)


class _NoAttention(nn.Module):
    """A causal model without attention: each position's logits from its own token only."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))


def test_a_model_without_attention_is_refused_in_one_line():
    gm = ac.capture(_NoAttention(), name="no-attention")
    with pytest.raises(ac.AeroError, match="no attention product") as error:
        derive_programs(gm)
    assert "\n" not in str(error.value)
