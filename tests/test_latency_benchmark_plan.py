"""benchmarks/latency.py --plan prices pending rows without running them, and skips rows already recorded."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _plan(out: Path, capsys) -> str:
    sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import their siblings as top-level modules
    try:
        import latency
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert latency.main(["--plan", "--engines", "crypten-tfp", "--models", "gpt2-tiny", "--seq-lens", "8",
                         "--networks", "lan", "wan", "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_the_plan_prices_each_pending_row_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    text = _plan(out, capsys)
    minutes = {key: float(m) for key, m in re.findall(r"^(\S+\|T=8\|\w+): about ([\d.]+) min of passes$", text, re.M)}
    assert set(minutes) == {"crypten-tfp|gpt2-tiny|T=8|lan", "crypten-tfp|gpt2-tiny|T=8|wan"}
    assert minutes["crypten-tfp|gpt2-tiny|T=8|wan"] > 10 * minutes["crypten-tfp|gpt2-tiny|T=8|lan"]  # 80 ms rounds
    assert "pending rows: about" in text and not out.exists()  # nothing was run, nothing written
    out.write_text(json.dumps({"key": "crypten-tfp|gpt2-tiny|T=8|wan"}) + "\n")  # a recorded row is not pending
    text = _plan(out, capsys)
    assert "T=8|lan" in text and "T=8|wan" not in text
