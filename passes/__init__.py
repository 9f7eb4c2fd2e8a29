"""Graph passes, one per file. Importing this package registers them all with the pass manager."""

from . import (  # noqa: F401
    canonicalize,
    entropy_hooks,
    fold_linear,
    gelu_to_identity,
    gelu_to_relu,
    prune_ffn,
    remove_layernorm,
    scale_ffn,
)
