"""One dataclass configures a training run; ``TrainConfig(model=..., out_dir=...)`` then ``train(config)``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import AeroError

# AERO's regularizer defaults (arXiv 2410.13060, entropy_regularizer.defaults in the reference JSON).
DEFAULT_LAMBDA = 1e-5
DEFAULT_GAMMA = 0.20
# theta's starting value: every head's entropy target starts mid-way in [0, E_max]. The paper makes
# theta learnable but does not give its initial value; 0.5 is our choice.
DEFAULT_THETA_INIT = 0.5

TEMPERATURES = ("none", "head", "position")
INITS = ("pretrained", "random")


def default_cache_dir() -> Path:
    """$AERO_CACHE, else $XDG_CACHE_HOME/aero-compile, else ~/.cache/aero-compile."""
    if os.environ.get("AERO_CACHE"):
        return Path(os.environ["AERO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aero-compile"


@dataclass(frozen=True)
class DistillWeights:
    """The weights of the distillation terms (``distill.DistillingLM``); ``TrainConfig.distill_weights`` builds one."""

    kl: float = 1.0
    temperature: float = 1.0  # of the logits in the KL term
    hidden: float = 0.0
    attention: float = 0.0
    lm: float = 1.0  # the cross-entropy on the data, beside the teacher's terms


@dataclass
class TrainConfig:
    """Everything a run needs. Only ``model`` and ``out_dir`` have no usable default."""

    model: str = "gpt2-tiny"  # anything load_model takes: a built-in spec, an HF directory, a .pt2
    out_dir: str = "aero-train"
    passes: str = "all"  # the rewrite pipeline; entropy-hooks is appended for training
    steps: int = 300
    gradual: int = 0  # > 0: blend the passes in over this many of the steps (gradual.py); 0: apply at step 0
    init: str = "pretrained"  # "pretrained": fine-tune the model's own weights; "random": from scratch
    # optimisation
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int | None = None  # default: 10% of steps, at most 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    batch_size: int = 16  # sequences per step per process
    seq_len: int = 128
    # AERO's entropy regularizer and softmax temperature
    entropy_reg: bool = True
    entropy_lambda: float = DEFAULT_LAMBDA
    entropy_gamma: float = DEFAULT_GAMMA
    theta_init: float = DEFAULT_THETA_INIT
    temperature: str = "none"  # none | head | position
    # distillation from the model before the passes (see distill.py); weights of the unweighted terms
    distill: bool = False
    distill_kl: float = 1.0
    distill_temperature: float = 1.0
    distill_hidden: float = 0.0
    distill_attention: float = 0.0
    lm_weight: float = 1.0  # weight of the cross-entropy on the data (below 1 only with --distill)
    # data and tokenizer
    data: str | None = None  # a directory of text files; None: this Python's standard-library sources
    corpus_max_bytes: int | None = None  # read at most this many bytes of the corpus (files in a fixed order)
    val_fraction: float = 0.05
    tokenizer: str = "auto"  # auto | bpe | path to a tokenizer.json
    cache_dir: str | None = None
    # evaluation, checkpoints, output
    eval_every: int = 0  # 0: only at the start and the end
    eval_batches: int = 16
    checkpoint_every: int = 100  # 0: only at the end
    resume: str | None = None  # a checkpoint file, or a directory holding checkpoint.pt
    overwrite: bool = False  # write into a non-empty out_dir (replacing a previous run's files) without resuming
    stop_after: int | None = None  # end this session after this step (resume later continues the same run)
    pictures: bool = True
    export_pt2: bool = True
    # machinery
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: str = "auto"  # auto (on CUDA) | on | off
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    seed: int = 0
    log_every: int = 10
    quiet: bool = False

    def validate(self) -> "TrainConfig":
        positive = {"steps": self.steps, "batch_size": self.batch_size, "seq_len": self.seq_len,
                    "eval_batches": self.eval_batches, "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise AeroError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.seq_len < 2:
            raise AeroError("--seq-len must be at least 2 (the entropy scale is log T)")
        if not self.lr > 0:
            raise AeroError(f"--lr must be positive, got {self.lr}")
        if self.entropy_lambda < 0 or self.entropy_gamma < 0:
            raise AeroError("--lambda and --gamma must be non-negative")
        if self.temperature not in TEMPERATURES:
            raise AeroError(f"--temperature must be one of {', '.join(TEMPERATURES)}, not '{self.temperature}'")
        if self.init not in INITS:
            raise AeroError(f"--init must be one of {', '.join(INITS)}, not '{self.init}'")
        if not 0 < self.val_fraction < 1:
            raise AeroError(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        if self.compile not in ("auto", "on", "off") or self.amp not in ("auto", "bf16", "off"):
            raise AeroError("--compile takes auto|on|off and --amp takes auto|bf16|off")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise AeroError(f"--{name.replace('_', '-')} must be 0 or positive")
        if self.stop_after is not None and self.stop_after < 1:
            raise AeroError("--stop-after must be a positive step number")
        if not isinstance(self.gradual, int) or self.gradual < 0:
            raise AeroError(f"--gradual must be 0 or a positive number of steps, got {self.gradual}")
        if self.gradual > self.steps:
            raise AeroError(f"--gradual {self.gradual} is more than --steps {self.steps}: the conversion must end "
                            "within the run (give --steps at least --gradual)")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise AeroError("--warmup-steps must be 0 or positive")
        self._validate_distill()
        self.check_out_dir()
        return self

    def _validate_distill(self) -> None:
        weights = {"--distill-kl": self.distill_kl, "--distill-hidden": self.distill_hidden,
                   "--distill-attention": self.distill_attention, "--lm-weight": self.lm_weight}
        for flag, value in weights.items():
            if not value >= 0:
                raise AeroError(f"{flag} must be 0 or positive, got {value}")
        if not self.distill_temperature > 0:
            raise AeroError(f"--distill-temperature must be positive, got {self.distill_temperature}")
        if not self.distill:
            if self.lm_weight != 1.0:
                raise AeroError("--lm-weight weighs the cross-entropy against the teacher's terms: give it with --distill")
            return
        if self.init != "pretrained":
            raise AeroError("--distill learns from the model's own weights: it needs --init pretrained "
                            "(a random teacher teaches nothing)")
        if not any(weights.values()):
            raise AeroError("--distill with every weight 0 has no loss: give --distill-kl, --distill-hidden, "
                            "--distill-attention or --lm-weight a positive value")

    @property
    def distill_weights(self) -> DistillWeights:
        return DistillWeights(kl=self.distill_kl, temperature=self.distill_temperature, hidden=self.distill_hidden,
                              attention=self.distill_attention, lm=self.lm_weight)

    def check_out_dir(self) -> None:
        """A previous run's files are never overwritten silently: a non-empty out_dir needs resume or overwrite.

        Checked by the first process only (under torchrun the others start while it may be writing)."""
        out = Path(self.out_dir)
        if out.exists() and not out.is_dir():
            raise AeroError(f"--out '{self.out_dir}' is a file: give a directory")
        if self.resume is not None or self.overwrite or os.environ.get("RANK", "0") != "0":
            return
        if out.is_dir() and any(out.iterdir()):
            raise AeroError(f"--out '{self.out_dir}' is not empty (a previous run's files would be overwritten): "
                            "pass --resume to continue that run, --overwrite to replace its files, or another --out")

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else min(100, self.steps // 10)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def to_dict(self) -> dict:
        return asdict(self)

    # Keys that define the trained function: a checkpoint resumes only under the same values.
    RUN_IDENTITY = ("model", "passes", "gradual", "init", "temperature", "entropy_reg", "seq_len", "batch_size", "data",
                    "corpus_max_bytes", "val_fraction", "tokenizer", "seed", "distill", "distill_kl",
                    "distill_temperature", "distill_hidden", "distill_attention", "lm_weight")


def config_field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]
