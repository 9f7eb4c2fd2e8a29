"""Checkpoints that resume a run exactly: weights, thresholds, optimizer state, step and history.

Batches are a function of the step (see data.py) and the learning rate a function of the step, so
nothing else is needed to continue the same run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import AeroError
from ..fileio import atomic_path
from .config import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def checkpoint_path(config: TrainConfig) -> Path:
    return Path(config.out_dir) / CHECKPOINT_NAME


def resolve_resume_path(resume: str, out_dir: str) -> Path:
    """``--resume`` alone means the output directory's checkpoint; a directory means the one inside it."""
    path = Path(out_dir) / CHECKPOINT_NAME if resume in ("auto", "") else Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise AeroError(f"no checkpoint at '{path}': give the checkpoint.pt of an earlier run (or its directory)")
    return path


def save_checkpoint(path: Path, *, model, optimizer, step: int, config: TrainConfig, state: dict) -> None:
    payload = {"format": FORMAT, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "config": config.to_dict(), "state": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, config: TrainConfig) -> dict:
    """Read a checkpoint (tensors and plain data only) and check it belongs to the same run."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AeroError(f"cannot read the checkpoint '{path}': {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AeroError(f"'{path}' is not an aero-compile training checkpoint")
    saved = payload["config"]
    # A key a checkpoint predates (e.g. gradual) had its default value then.
    defaults = TrainConfig()
    differing = [key for key in TrainConfig.RUN_IDENTITY if saved.get(key, getattr(defaults, key)) != getattr(config, key)]
    if differing:
        details = ", ".join(f"{key}={saved.get(key)!r} (now {getattr(config, key)!r})" for key in differing)
        raise AeroError(f"the checkpoint '{path}' is from a different run: {details}; give the same flags to resume")
    return payload
