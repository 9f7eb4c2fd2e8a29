"""Analyzer savings of the attention pipelines on GPT-2 small, against the original model.

    python benchmarks/attention_savings.py                      # writes benchmarks/results/attention_savings.{json,md}
    python benchmarks/attention_savings.py --seq-len 64 --out /tmp/s

The same figures as ``aero-compile gpt2 --passes P --protocol X --network N --seq-len 128 --report-json
r.json`` gives in ``r.json["savings"]`` (one capture, each pipeline run once and priced under every
profile here, so the table takes minutes, not an hour of CLI runs). crypten figures are per query
(weights masked once per model, the backend's default; the once-per-model setup is not in them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import warnings
from pathlib import Path

PIPELINES = [
    "all",
    "all,softmax-to-relu",
    "all,softmax-to-relu{norm=sum}",
    "all,softmax-to-quad",
    "all,softmax-to-quad{norm=length}",
    "all,softmax-no-max",
    "all,linearize-heads",
    "all,softmax-to-quad{norm=length},prune-ffn",
    "all,softmax-to-quad{norm=length},fold-scales",
    "all,softmax-to-relu,fold-scales",
    "all,softmax-to-quad{norm=length},prune-ffn,fold-scales",
]
PRICINGS = [("crypten", "lan"), ("crypten", "wan"), ("bumblebee", "wan")]
RESULTS = Path(__file__).resolve().parent / "results"


def savings_table(model: str, seq_len: int, pipelines: list[str]) -> dict:
    import aero_compile as ac
    from aero_compile.cost import analyze, savings

    gm = ac.capture(ac.load_model(model), name=model)
    before = {pricing: analyze(gm, profile=pricing[0], network=pricing[1], seq_len=seq_len) for pricing in PRICINGS}
    rows = []
    for pipeline in pipelines:
        started = time.perf_counter()
        after_gm = ac.PassManager.from_pipeline(pipeline, seq_len=seq_len).run(gm).graph_module
        row = {"passes": pipeline}
        for pricing in PRICINGS:
            after = analyze(after_gm, profile=pricing[0], network=pricing[1], seq_len=seq_len)
            ratio = savings(before[pricing], after)
            row["/".join(pricing)] = {"bytes": after.bytes, "rounds": after.rounds, "latency_s": after.latency_s,
                                      "saving": {"bytes": ratio.bytes, "rounds": ratio.rounds,
                                                 "latency": ratio.latency}}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(markdown_row(row), flush=True)
    original = {"/".join(p): {"bytes": r.bytes, "rounds": r.rounds, "latency_s": r.latency_s} for p, r in before.items()}
    return {"model": model, "seq_len": seq_len, "original": original, "rows": rows}


def markdown_row(row: dict) -> str:
    cells = [f"`{row['passes']}`"]
    for pricing in PRICINGS:
        saving = row["/".join(pricing)]["saving"]
        if pricing == ("crypten", "lan"):
            cells += [f"{saving['bytes']:.2f}x", f"{saving['rounds']:.1f}x", f"{saving['latency']:.2f}x"]
        else:
            cells += ([f"{saving['latency']:.2f}x"] if pricing[0] == "crypten" else
                      [f"{saving['bytes']:.2f}x", f"{saving['latency']:.2f}x"])
    return "| " + " | ".join(cells) + " |"


def markdown(table: dict) -> str:
    header = ("| `--passes` | crypten bytes | crypten rounds | crypten LAN latency | crypten WAN latency | "
              "bumblebee WAN bytes | bumblebee WAN latency |\n|---|---|---|---|---|---|---|\n")
    return header + "\n".join(markdown_row(row) for row in table["rows"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--only", help="comma-separated indices into the pipeline list (default: all)")
    parser.add_argument("--out", default=str(RESULTS / "attention_savings"), help="path stem of the .json and .md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pipelines = PIPELINES if not args.only else [PIPELINES[int(i)] for i in args.only.split(",")]
    table = savings_table(args.model, args.seq_len, pipelines)
    table["command"] = "python benchmarks/attention_savings.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out")
    table["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent).stdout.strip()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(table, indent=1))
    Path(args.out + ".md").write_text(markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
