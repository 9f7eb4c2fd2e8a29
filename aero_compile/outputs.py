"""The files one CLI run writes: checked before any work, written into a stage, moved into place together.

    with OutputPlan({"-o": "m.pt2", "--report-json": "r.json"}) as outputs:   # bad paths fail here, in one line
        emit(gm, outputs.staged("-o"))          # writers write beside the target, in a hidden stage folder
        write_json_atomic(outputs.staged("--report-json"), ...)
        outputs.commit()                        # only now do the files appear (companions before the main file)

A run that fails or is interrupted before ``commit`` leaves no output behind (the stage is removed), and
no earlier file of the same name is touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import AeroError

STAGE_PREFIX = ".aero-compile-stage-"


def check_output_path(flag: str, path: str | os.PathLike) -> Path:
    """The nearest existing folder the output goes under (created folders are made at commit);
    a one-line AeroError when the path is a folder or the place is not writable."""
    text = str(path)
    target = Path(text)
    if text.endswith(os.sep) or target.is_dir():
        raise AeroError(f"{flag} '{text}' is a directory: give a file name")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AeroError(f"{flag} '{text}': '{ancestor}' is not a directory")
    return ancestor


class OutputPlan:
    """See the module docstring. ``targets``: flag -> path (None or "" for an output not asked for)."""

    def __init__(self, targets: dict[str, str | os.PathLike | None]):
        self.targets = {flag: Path(str(path)) for flag, path in targets.items() if path}
        seen: dict[Path, str] = {}
        for flag, path in self.targets.items():
            key = Path(os.path.abspath(path))
            if key in seen:
                raise AeroError(f"{seen[key]} and {flag} name the same file '{path}'")
            seen[key] = flag
        self.ancestors = {flag: check_output_path(flag, path) for flag, path in self.targets.items()}
        self._stages: dict[Path, Path] = {}
        self._slots: dict[str, Path] = {}

    def __enter__(self) -> "OutputPlan":
        try:
            for flag, ancestor in self.ancestors.items():
                stage = self._stages.get(ancestor)
                if stage is None:
                    try:
                        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=ancestor))
                    except OSError as exc:
                        raise AeroError(f"{flag} '{self.targets[flag]}': cannot write in '{ancestor}' "
                                        f"({exc.strerror or type(exc).__name__})") from None
                    self._stages[ancestor] = stage
                slot = stage / str(len(self._slots))
                slot.mkdir()
                self._slots[flag] = slot
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def staged(self, flag: str) -> Path:
        """Where the writer of ``flag`` writes (same file name as the target, in the stage)."""
        return self._slots[flag] / self.targets[flag].name

    def final_paths(self, record):
        """``record`` (a backend's output record) with staged paths replaced by the final ones."""
        if isinstance(record, dict):
            return {key: self.final_paths(value) for key, value in record.items()}
        if isinstance(record, list):
            return [self.final_paths(value) for value in record]
        if isinstance(record, str):
            for flag, slot in self._slots.items():
                if record == str(slot) or record.startswith(str(slot) + os.sep):
                    return str(self.targets[flag].parent / os.path.relpath(record, slot))
        return record

    def commit(self) -> list[Path]:
        """Move every staged file into place: companions (e.g. ONNX external data) before the file itself."""
        written = []
        for flag, slot in self._slots.items():
            target = self.targets[flag]
            files = sorted(slot.iterdir(), key=lambda p: p.name == target.name)  # the main file last
            if files:
                target.parent.mkdir(parents=True, exist_ok=True)
            for file in files:
                destination = target.parent / file.name
                os.replace(file, destination)
                written.append(destination)
        return written

    def _cleanup(self) -> None:
        for stage in self._stages.values():
            shutil.rmtree(stage, ignore_errors=True)
        self._stages.clear()
