"""Hugging Face causal LMs, as modules that map input_ids to logits and nothing else.

Eager attention everywhere, so every softmax is a visible node; no KV cache, so the graph is one
forward pass.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import AeroError, describe


class CausalLMLogits(nn.Module):
    """Wrap a transformers causal LM: input_ids [B, T] -> logits [B, T, V]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        standard_experts(model)

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def standard_experts(model: nn.Module) -> None:
    """Mixture-of-experts layers dispatch tokens with standard ops (gather, bmm), not transformers' own.

    transformers' default ``grouped_mm`` falls back, under export, to its custom op
    ``transformers::grouped_mm_fallback``: a graph holding it cannot be priced, lowered to ONNX or loaded
    from a .pt2 without transformers. ``batched_mm`` gathers each token's expert weights and multiplies
    them in a batch: plain aten ops, the same logits.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_experts_implementation"):
        try:
            config._experts_implementation = "batched_mm"
        except (AttributeError, ValueError, TypeError):
            pass  # an older transformers without selectable experts


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights" bars would break the one-line errors


def hf_causal_lm(model_type: str, config_values: dict) -> nn.Module:
    """A randomly initialized transformers causal LM of ``model_type`` with eager attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    try:
        config = AutoConfig.for_model(model_type, **config_values)
    except (ValueError, TypeError) as exc:
        raise AeroError(f"cannot build a '{model_type}' config from {config_values}: {exc}") from None
    config._attn_implementation = "eager"
    config.use_cache = False
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return CausalLMLogits(model.eval())


def load_hf_directory(path: str) -> nn.Module:
    """A save_pretrained directory, loaded offline with eager attention."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        raise AeroError(f"cannot load the Hugging Face model in '{path}': {describe(exc)}") from None
    model.config.use_cache = False
    return CausalLMLogits(model.eval())
