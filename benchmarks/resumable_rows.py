"""The JSONL row files of the resumable benchmarks (latency.py, generation.py): one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path


def read_rows(path: Path) -> dict[str, dict]:
    """Rows recorded so far, by key; a last line cut short by a crash is skipped (it is run again)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["key"]] = row
    return rows
