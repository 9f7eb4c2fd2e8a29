"""Write an ONNX model and its external-data file so that a failure leaves nothing behind.

The model is written under its final file name inside a fresh directory beside the target (external
data records its file name relative to the model, so the name must not change), checked there, and
only then moved into place: the data file first, the model last, each with an atomic rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staged_model_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield where to write the model; on success move everything written beside it next to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staged = stage / target.name
        yield staged
        companions = sorted(p for p in stage.iterdir() if p != staged)
        for companion in companions:  # external data before the model that refers to it
            os.replace(companion, target.parent / companion.name)
        os.replace(staged, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
