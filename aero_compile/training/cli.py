"""``aero-compile train MODEL --passes P --steps N --out DIR``: rewrite a model, then train it.

    aero-compile train 'gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=4096}' --passes all --steps 300 \\
        --init random --out runs/all-ereg
    aero-compile train ./hf-checkpoint --passes all --steps 2000 --out runs/ft      # fine-tune own weights
    aero-compile train ... --resume                                                  # continue runs/...
    torchrun --nproc_per_node 8 -m aero_compile train ...                            # DDP, one GPU each
"""

from __future__ import annotations

import argparse

from .config import DEFAULT_GAMMA, DEFAULT_LAMBDA, DEFAULT_THETA_INIT, INITS, TEMPERATURES, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="aero-compile train",
        description="Rewrite a model with a pass pipeline, then train it (AERO entropy regularizer on by default).",
    )
    parser.add_argument("model", help="built-in spec (e.g. 'gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=4096}'), "
                                      "Hugging Face directory or .pt2; its vocabulary must hold the tokenizer's")
    parser.add_argument("--passes", default=defaults.passes, help="rewrite pipeline before training (default: all; 'none' trains the baseline)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    from .gradual import BLENDING_PASSES

    parser.add_argument("--gradual", type=int, default=0, metavar="STEPS",
                        help="reach the pipeline's form after STEPS of the --steps instead of at step 0: "
                             f"{', '.join(BLENDING_PASSES)} blend in (norms: divisor frozen to a running average, "
                             "then removed layer by layer; activations and attention forms mixed in); every other "
                             "pass is applied at step 0, fold-linear and fold-scales at export (default 0: off)")
    parser.add_argument("--out", required=True, help="output directory: model.pt2, metrics.json, pictures, checkpoint.pt")
    parser.add_argument("--init", choices=INITS, default=defaults.init,
                        help="pretrained: fine-tune the model's own weights; random: train from scratch (default pretrained)")
    group = parser.add_argument_group("optimization")
    group.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    group.add_argument("--min-lr-ratio", type=float, default=defaults.min_lr_ratio, help="cosine decay floor as a fraction of --lr")
    group.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 10%% of --steps, at most 100)")
    group.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    group.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="max gradient norm (0: off)")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sequences per step per process")
    group.add_argument("--seq-len", type=int, default=defaults.seq_len, help="tokens per sequence (T; E_max = log T)")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group = parser.add_argument_group("entropy regularizer (AERO)")
    group.add_argument("--entropy-reg", action=argparse.BooleanOptionalAction, default=True,
                       help="add lambda * head-wise entropy penalty to the loss (default on)")
    group.add_argument("--lambda", dest="entropy_lambda", type=float, default=DEFAULT_LAMBDA, help=f"penalty weight (default {DEFAULT_LAMBDA:g})")
    group.add_argument("--gamma", dest="entropy_gamma", type=float, default=DEFAULT_GAMMA, help=f"tolerance band as a fraction of E_max (default {DEFAULT_GAMMA})")
    group.add_argument("--theta-init", type=float, default=DEFAULT_THETA_INIT, help=f"start of the learnable per-head target (default {DEFAULT_THETA_INIT})")
    group.add_argument("--temperature", choices=TEMPERATURES, default="none",
                       help="learnable softmax temperature: per head, or per head and query position (default none)")
    group = parser.add_argument_group("distillation from the model before the passes")
    group.add_argument("--distill", action="store_true",
                       help="teacher: MODEL before the passes (frozen); student: the rewritten graph from the same weights")
    group.add_argument("--distill-kl", type=float, default=defaults.distill_kl,
                       help=f"weight of the temperature-scaled KL on the logits (default {defaults.distill_kl:g})")
    group.add_argument("--distill-temperature", type=float, default=defaults.distill_temperature,
                       help=f"temperature of that KL (default {defaults.distill_temperature:g})")
    group.add_argument("--distill-hidden", type=float, default=defaults.distill_hidden,
                       help="weight of the relative MSE of the residual stream after each block (default 0: off)")
    group.add_argument("--distill-attention", type=float, default=defaults.distill_attention,
                       help="weight of the relative MSE of surviving softmax attention maps (default 0: off)")
    group.add_argument("--lm-weight", type=float, default=defaults.lm_weight,
                       help="weight of the language-model cross-entropy beside the teacher's terms (default 1; 0: teacher only)")
    group = parser.add_argument_group("data")
    group.add_argument("--data", help="directory of text files (default: this Python's standard-library sources)")
    group.add_argument("--corpus-max-bytes", type=int, help="read at most this many bytes of the corpus")
    group.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    group.add_argument("--tokenizer", default="auto",
                       help="auto (the model's tokenizer.json, else a BPE of the model's vocabulary size), bpe, or a tokenizer.json")
    group.add_argument("--cache-dir", help="tokenizer and token cache (default $AERO_CACHE or ~/.cache/aero-compile)")
    group = parser.add_argument_group("run")
    group.add_argument("--resume", nargs="?", const="auto", help="continue from a checkpoint (default: the one in --out)")
    group.add_argument("--overwrite", action="store_true",
                       help="train into a non-empty --out, replacing a previous run's files (refused otherwise)")
    group.add_argument("--stop-after", type=int, help="end this session after this step; --resume continues it")
    group.add_argument("--eval-every", type=int, default=defaults.eval_every, help="validation every N steps (0: start and end only)")
    group.add_argument("--eval-batches", type=int, default=defaults.eval_batches, help="validation batches (of --batch-size windows)")
    group.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="0: only at the end")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun picks LOCAL_RANK)")
    group.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile (auto: on CUDA)")
    group.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="autocast (auto: bf16 on CUDA)")
    group.add_argument("--log-every", type=int, default=defaults.log_every)
    group.add_argument("--no-pictures", dest="pictures", action="store_false", help="skip the entropy PNGs")
    group.add_argument("--quiet", action="store_true", help="no progress output")
    group.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k not in ("out", "debug")}
    return TrainConfig(out_dir=args.out, **values)


def train_command(argv: list[str]) -> int:
    from .loop import train

    args = build_parser().parse_args(argv)
    result = train(config_from_args(args))
    metrics = result.metrics
    if not metrics:  # a non-zero rank under torchrun
        return 0
    if not result.finished:
        print(f"stopped after step {metrics['steps']} of {metrics['steps_planned']}; "
              f"continue with --resume (checkpoint in {args.out})")
        return 0
    if "distill" in metrics:
        kl = metrics["distill"]["val_start"]["kl"], metrics["distill"]["val_end"]["kl"]
        print(f"distillation: KL to the teacher {kl[0]:.4g} -> {kl[1]:.4g} on the validation windows")
    if metrics.get("gradual"):
        g = metrics["gradual"]
        print(f"gradual: {', '.join(g['blended'])} blended in over {g['steps']} steps"
              + (f"; {', '.join(g['applied_at_step_0'])} applied at step 0" if g["applied_at_step_0"] else "")
              + (f"; {', '.join(g['at_export'])} at export" if g["at_export"] else ""))
    if metrics.get("val_ppl_export") is not None:
        print(f"exported model.pt2 (fresh load): val ppl {metrics['val_ppl_export']:.2f}")
    print(f"val ppl {metrics['val_ppl_start']:.2f} -> {metrics['val_ppl_end']:.2f} in {metrics['steps']} steps, "
          f"{metrics['tokens_per_s']:,.0f} tokens/s; entropy penalty {metrics['entropy_penalty_final']:.3g}; "
          f"wrote {args.out}/metrics.json")
    return 0
