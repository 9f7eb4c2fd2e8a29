"""softmax-no-max on a trained model, privately: argmax agreement with its own plaintext logits, per run.

    python benchmarks/softmax_no_max_check.py MODEL.pt2 --runs 5 --seq-len 128 [--extra-pass-module FILE]

Each run feeds different corpus tokens (the model's tokenizer.json beside it, else the cached BPE); every
graph of a run goes through one CrypTen launch (2 parties, tfp). Graphs: the model as it is (its
softmax, the reference for CrypTen's own accuracy) and the model with ``softmax-no-max`` (offsets
calibrated on ``--calibrate`` corpus sequences, never the run's). Prints and writes JSON lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--calibrate", type=int, default=8)
    parser.add_argument("--passes", default="softmax-no-max{tokens=corpus,calibrate=%d,calib_len=%d}",
                        help="';'-separated pipelines to compare with the model as it is")
    parser.add_argument("--extra-pass-module", help="a file registering more passes (e.g. an earlier form)")
    parser.add_argument("--out", default="out/softmax_no_max_check.jsonl")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from aero_compile.calibration import calibration_tokens
    from aero_compile.capturing import capture, run_graph
    from aero_compile.loader import load_model
    from aero_compile.pass_manager import PassManager
    from aero_compile.targets.crypten.runner import launch_parties
    from aero_compile.targets.private.measured import logits_error

    if args.extra_pass_module:
        spec = importlib.util.spec_from_file_location("extra_passes", args.extra_pass_module)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    gm = capture(load_model(args.model), name=args.model)
    graphs = {"as is": gm}
    for text in args.passes.split(";"):
        text = text % (args.calibrate, args.seq_len) if "%d" in text else text
        result = PassManager.from_pipeline(text).run(gm)
        graphs[text] = result.graph_module
        print(f"{text}: " + " | ".join(result.report.passes[-1].notes or []), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for run in range(args.runs):
        ids = calibration_tokens(gm, 1, args.seq_len, "corpus", seed=1000 + run)  # not a calibration sequence
        parties = launch_parties(graphs, ids, provider="tfp", timeout_s=1800)
        for name, graph in graphs.items():
            private = torch.as_tensor(parties[1][name]["logits"]).float()
            plain = run_graph(graph, ids)
            row = {"run": run, "graph": name, "seq_len": args.seq_len, "nan": bool(torch.isnan(private).any()),
                   **logits_error(private, plain)}
            print(json.dumps(row), flush=True)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
