"""benchmarks/latency.py --plan prices pending rows without running them, and skips rows already recorded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


def _plan(out: Path, *options: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--plan", "--engines", "crypten-tfp", "--models", "gpt2-tiny",
                           "--seq-lens", "8", "--out", str(out), *options], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_plan_prices_each_pending_row_and_runs_nothing(tmp_path):
    out = tmp_path / "rows.jsonl"
    text = _plan(out, "--networks", "lan", "wan")
    minutes = {key: float(m) for key, m in re.findall(r"^(\S+\|T=8\|\w+): about ([\d.]+) min of passes$", text, re.M)}
    assert set(minutes) == {"crypten-tfp|gpt2-tiny|T=8|lan", "crypten-tfp|gpt2-tiny|T=8|wan"}
    assert minutes["crypten-tfp|gpt2-tiny|T=8|wan"] > 10 * minutes["crypten-tfp|gpt2-tiny|T=8|lan"]  # 80 ms rounds
    assert "pending rows: about" in text and not out.exists()  # nothing was run, nothing written
    out.write_text(json.dumps({"key": "crypten-tfp|gpt2-tiny|T=8|wan"}) + "\n")  # a recorded row is not pending
    assert "T=8|wan" not in _plan(out, "--networks", "lan", "wan")
