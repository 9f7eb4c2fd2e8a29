"""The text to train on: a directory of text files, or this Python's standard-library sources.

The split into train and validation is by a hash of each file's path relative to the corpus root, so
it is the same on every machine and every run, and a file never lands on both sides.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import AeroError

TEXT_SUFFIXES = frozenset({".py", ".txt", ".md", ".rst", ".c", ".h", ".js", ".json", ".toml", ".cfg", ".ini",
                           ".yaml", ".yml", ".html", ".css", ".sh", ".java", ".go", ".rs", ".cpp", ".ts", ""})
# Test directories of the standard library are mostly fixtures (odd encodings, generated data): skip them.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    """Documents of the two splits, and a key that changes when the selected files change."""

    name: str
    train: list[str]
    val: list[str]
    key: str  # content fingerprint: caches of tokenizers and token ids are keyed by it


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _path_hash(relative: str, purpose: str) -> int:
    """A stable 64-bit hash; independent ones for the read order and the split (so a byte cap keeps the ratio)."""
    return int.from_bytes(hashlib.sha1(f"{purpose}:{relative}".encode()).digest()[:8], "big")


def _stdlib_files(root: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        found.extend(Path(directory) / f for f in files if f.endswith(".py"))
    return found


def _text_files(root: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
        found.extend(Path(directory) / f for f in files
                     if not f.startswith(".") and Path(f).suffix.lower() in TEXT_SUFFIXES)
    return found


def _read(path: Path) -> str:
    # Corpora are mostly UTF-8; a stray byte should not stop a run, so replace it.
    return path.read_bytes().decode("utf-8", errors="replace")


def load_corpus(data: str | None, *, val_fraction: float = 0.05, max_bytes: int | None = None) -> Corpus:
    """Read and split the corpus: ``data`` a directory (or one text file), None for the stdlib sources."""
    if data is None:
        root, files, name = stdlib_root(), None, "python-stdlib"
        files = _stdlib_files(root)
    else:
        root = Path(data)
        if not root.exists():
            raise AeroError(f"--data '{data}' does not exist: give a directory of text files")
        name = str(root)
        files = [root] if root.is_file() else _text_files(root)
        root = root.parent if root.is_file() else root
    if not files:
        raise AeroError(f"no text files under '{root}': give a directory with .txt/.py/.md/... files")
    # A fixed pseudo-random order (by path hash): a byte cap then samples the whole tree, not one folder.
    relative = sorted((_path_hash(str(p.relative_to(root)), "order"), str(p.relative_to(root)), p) for p in files)
    chosen, total = [], 0
    for _, rel, path in relative:
        if max_bytes is not None and total >= max_bytes:
            break
        text = _read(path)
        if text.strip():
            chosen.append((_path_hash(rel, "split"), rel, text))
            total += len(text.encode())
    if not chosen:
        raise AeroError(f"the text files under '{root}' are empty")
    train, val = _split(chosen, val_fraction)
    digest = hashlib.sha1()
    for _, rel, text in chosen:
        digest.update(rel.encode() + b"\0" + hashlib.sha1(text.encode()).digest())
    digest.update(f"val={val_fraction}".encode())
    return Corpus(name=name, train=train, val=val, key=digest.hexdigest()[:16])


def _split(chosen: list[tuple[int, str, str]], val_fraction: float) -> tuple[list[str], list[str]]:
    if len(chosen) == 1:  # one document: its tail is the validation text
        text = chosen[0][2]
        cut = int(len(text) * (1 - val_fraction))
        if cut < 1 or cut >= len(text):
            raise AeroError("the corpus is a single document too short to split into train and validation")
        return [text[:cut]], [text[cut:]]
    threshold = int(val_fraction * 2**64)
    train = [text for hashed, _, text in chosen if hashed >= threshold]
    val = [text for hashed, _, text in chosen if hashed < threshold]
    if not val:  # few files: the hash may pick none, so take the file with the smallest split hash
        first = min(range(len(chosen)), key=lambda i: chosen[i][0])
        val, train = [chosen[first][2]], [text for i, (_, _, text) in enumerate(chosen) if i != first]
    if not train:
        train, val = val[1:], val[:1]
    return train, val
