"""Graph passes, one per file. Importing this package registers them all with the pass manager."""

from . import (  # noqa: F401
    canonicalize,
    entropy_hooks,
    fold_linear,
    fold_scales,
    gelu_to_identity,
    gelu_to_relu,
    linearize_heads,
    prune_ffn,
    remove_layernorm,
    scale_ffn,
    softmax_no_max,
    softmax_to_quad,
    softmax_to_relu,
)
