"""Built-in model architectures, built from configs with a fixed seed (random weights).

``build_builtin("gpt2{n_layer=18}")`` -> nn.Module taking input_ids [B, T] and returning logits.
The cost analysis needs only the architecture; real weights are a user's local files.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn as nn

from ..errors import AeroError
from ..pipeline_text import parse_item
from .gpt2 import GPT, GPTConfig
from .hf import CausalLMLogits, hf_causal_lm


@dataclass(frozen=True)
class Builtin:
    description: str
    build: Callable[[dict], nn.Module]


def _ours(**defaults) -> Callable[[dict], nn.Module]:
    def build(overrides: dict) -> nn.Module:
        known = {f.name for f in fields(GPTConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise AeroError(f"unknown config key(s) {unknown} for the built-in GPT-2: known keys are {sorted(known)}")
        return GPT(GPTConfig(**{**defaults, **overrides}))

    return build


def _hf(model_type: str, **defaults) -> Callable[[dict], nn.Module]:
    return lambda overrides: hf_causal_lm(model_type, {**defaults, **overrides})


_GPT2_TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=256, block_size=256)

BUILTINS: dict[str, Builtin] = {
    "gpt2": Builtin("GPT-2 small (ours): 12 layers, 12 heads, d=768, vocab 50257, context 1024", _ours()),
    "gpt2-medium": Builtin("GPT-2 medium (ours): 24 layers, 16 heads, d=1024", _ours(n_layer=24, n_head=16, n_embd=1024)),
    "gpt2-large": Builtin("GPT-2 large (ours): 36 layers, 20 heads, d=1280", _ours(n_layer=36, n_head=20, n_embd=1280)),
    "gpt2-tiny": Builtin("tiny GPT-2 (ours) for tests: 2 layers, 4 heads, d=64, vocab 256", _ours(**_GPT2_TINY)),
    "hf-gpt2": Builtin("Hugging Face GPT2LMHeadModel, GPT-2 small config", _hf("gpt2")),
    "hf-gpt2-tiny": Builtin("Hugging Face GPT2LMHeadModel: 2 layers, 4 heads, d=64, vocab 256",
                            _hf("gpt2", n_layer=2, n_head=4, n_embd=64, vocab_size=256, n_positions=256,
                                bos_token_id=0, eos_token_id=0)),
    "pythia-70m": Builtin("GPT-NeoX (Pythia-70M config): 6 layers, 8 heads, d=512, vocab 50304",
                          _hf("gpt_neox", num_hidden_layers=6, num_attention_heads=8, hidden_size=512,
                              intermediate_size=2048, vocab_size=50304, max_position_embeddings=2048,
                              rotary_pct=0.25, use_parallel_residual=True)),
    "pythia-tiny": Builtin("GPT-NeoX: 2 layers, 4 heads, d=64, vocab 256",
                           _hf("gpt_neox", num_hidden_layers=2, num_attention_heads=4, hidden_size=64,
                               intermediate_size=256, vocab_size=256, max_position_embeddings=256,
                               rotary_pct=0.25, use_parallel_residual=True, bos_token_id=0, eos_token_id=0)),
    "llama-tiny": Builtin("Llama: 2 layers, 4 heads (2 KV), d=64, SwiGLU 172, vocab 256",
                          _hf("llama", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              hidden_size=64, intermediate_size=172, vocab_size=256,
                              max_position_embeddings=256, bos_token_id=0, eos_token_id=0)),
}

BUILTIN_SEED = 0


def builtin_names() -> list[str]:
    return list(BUILTINS)


def is_builtin_spec(spec: str) -> bool:
    try:
        return parse_item(spec)[0] in BUILTINS
    except AeroError:
        return False


def build_builtin(spec: str) -> nn.Module:
    """Build a built-in architecture from 'name' or 'name{key=value,...}', seeded so runs agree."""
    name, overrides = parse_item(spec)
    if name not in BUILTINS:
        raise AeroError(f"unknown built-in model '{name}': known built-ins are {', '.join(BUILTINS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILTIN_SEED)
        model = BUILTINS[name].build(overrides)
    return model.eval()


__all__ = ["GPT", "GPTConfig", "CausalLMLogits", "BUILTINS", "build_builtin", "builtin_names", "hf_causal_lm"]
