"""Training the rewritten model with AERO's entropy regularizer.

    from aero_compile.training import TrainConfig, train
    result = train(TrainConfig(model="gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=4096}", passes="all",
                               steps=300, out_dir="runs/all-ereg", entropy_reg=True))
    result.metrics["val_ppl_end"], result.entropies_after, result.graph_module
"""

from .config import TrainConfig
from .loop import TrainResult, lr_at, train
from .regularizer import EntropyRegularizer, entropy_penalty, max_entropy

__all__ = ["EntropyRegularizer", "TrainConfig", "TrainResult", "entropy_penalty", "lr_at", "max_entropy", "train"]
