"""Private generation per token: measured vs predicted, and GPT-2 small's decode step vs re-running.

    python benchmarks/generation.py                       # every row (resumes: rows already recorded are skipped)
    python benchmarks/generation.py --only private --engines crypten --models gpt2-tiny
    python benchmarks/generation.py --only analyzer       # GPT-2 small from the cost analyzer alone
    python benchmarks/generation.py --show                # print the tables of the rows recorded

**Private rows** (engine x model x pipeline): ``aero-compile MODEL --engine ENGINE --protocol PROFILE
--passes PIPELINE --run-private --generate 16 --prompt-ids <32 ids> --network loopback`` in its own
process; the report's ``measured.{before,after}.generation.decode`` (per step: context, rounds, bytes,
seconds; the prefill first) beside ``{before,after}.generation.decode`` (the analyzer's per step, for the
same engine profile on loopback). The engine is a row parameter: an engine whose ``--run-private
--generate`` the CLI refuses is reported as waiting and not written, so its rows appear, without a code
change, once the engine generates. Predicted seconds are the analyzer's on loopback (both parties ran on
this machine, no emulated link); rounds and bytes do not depend on the network.

**Analyzer rows** (profile x pipeline x context): GPT-2 small's decode step at context C + 1 (the token
after a C-token prompt) beside re-running the C + 1 tokens, as ``aero-compile gpt2 --generate 2 --seq-len C
--protocol PROFILE`` prices them (``generation.pricing.price_generation``; weights masked once per model,
the default). Rows are appended to JSONL files under ``benchmarks/results/`` as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from resumable_rows import read_rows  # a sibling module: these run as python benchmarks/NAME.py

RESULTS = Path(__file__).parent / "results"
ENGINES = {"crypten": "crypten", "spu": "spu-cheetah"}  # engine -> the analyzer profile that prices it
MODELS = ["gpt2-tiny", "gpt2{n_layer=4,n_embd=256,n_head=4,vocab_size=2048}"]
PIPELINES = {"all": "all", "best": "all,softmax-to-quad{norm=length},fold-scales"}  # "before" is the baseline
PROMPT_TOKENS, NEW_TOKENS = 32, 16
ANALYZER_PROFILES = ["crypten", "spu-cheetah", "bumblebee"]
ANALYZER_PIPELINES = {"baseline": None, "all": "all", "best": "all,softmax-to-quad{norm=length},fold-scales"}
CONTEXTS = [128, 256, 512, 1024]


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def prompt_ids(vocab_size: int) -> list[int]:
    import torch

    return torch.randint(0, vocab_size, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0)).tolist()


def run_private_row(engine: str, model: str, pipeline: str) -> dict | str:
    """One private row, or the engine's one-line refusal (it cannot generate yet)."""
    import aero_compile as ac
    from aero_compile.generation import derive_programs
    from aero_compile.generation.pricing import price_generation
    from aero_compile.graph_info import graph_info

    base = ac.capture(ac.load_model(model))
    vocab = graph_info(base).vocab_size or 2
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        command = [sys.executable, "-m", "aero_compile", model, "--engine", engine, "--protocol", ENGINES[engine],
                   "--passes", PIPELINES[pipeline], "--run-private", "--generate", str(NEW_TOKENS),
                   "--prompt-ids", ",".join(map(str, prompt_ids(vocab))), "--report-json", str(report)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode == 2:
            return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "refused"
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[2:])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        data = json.loads(report.read_text())
    # the report prices the default network (lan); both parties ran on this machine: price loopback too
    graphs = {"before": base, "after": ac.PassManager.from_pipeline(PIPELINES[pipeline]).run(base).graph_module}
    sides = {}
    for side in ("before", "after"):
        measured = data["measured"][side]["generation"]
        predicted = data[side]["generation"]
        loopback = price_generation(graphs[side], derive_programs(graphs[side]), PROMPT_TOKENS, NEW_TOKENS,
                                    profile=ENGINES[engine], network="loopback")
        assert [(s.rounds, s.bytes) for s in loopback.decode] == [(p["rounds"], p["bytes"]) for p in predicted["decode"]]
        steps = [{"context": m["context"], "seconds": m["seconds"], "predicted_s": round(l.latency_s, 4),
                  "rounds": m["rounds"], "predicted_rounds": p["rounds"], "bytes": m["bytes"],
                  "predicted_bytes": p["bytes"]}
                 for m, p, l in zip(measured["decode"][1:], predicted["decode"], loopback.decode)]
        prefill = measured["decode"][0]
        sides[side] = {"steps": steps, "prefill": {**prefill, "predicted_s": round(loopback.prefill.latency_s, 4),
                                                   "predicted_rounds": predicted["prefill"]["rounds"],
                                                   "predicted_bytes": predicted["prefill"]["bytes"]},
                       "tokens_equal": measured["tokens"] == measured["plaintext_tokens"],
                       "near_ties": measured["near_ties"]}
    return {"key": f"{engine}|{model}|{pipeline}", "engine": engine, "model": model, "pipeline": pipeline,
            "passes": PIPELINES[pipeline], "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
            "sides": sides, "wall_s": round(wall, 1), "load_average_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}


def run_analyzer_rows(rows: dict, out: Path, profiles, pipelines, contexts) -> None:
    import aero_compile as ac
    from aero_compile.generation import derive_programs
    from aero_compile.generation.pricing import price_generation

    base = None
    for pipeline in pipelines:
        todo = [(p, c) for p in profiles for c in contexts if f"gpt2|{pipeline}|{p}|C={c}" not in rows]
        if not todo:
            continue
        base = base or ac.capture(ac.load_model("gpt2"))
        passes = ANALYZER_PIPELINES[pipeline]
        gm = base if passes is None else ac.PassManager.from_pipeline(passes).run(base).graph_module
        programs = derive_programs(gm)
        for profile, context in todo:
            key = f"gpt2|{pipeline}|{profile}|C={context}"
            try:
                cost = price_generation(gm, programs, prompt_tokens=context, new_tokens=2, profile=profile)
            except Exception as exc:  # a profile that cannot price these programs: say so, write nothing
                print(f"{key}: not priced ({str(exc).splitlines()[0][:120]})", flush=True)
                continue
            step, rerun = cost.decode[0], cost.rerun_steps[1]
            row = {"key": key, "model": "gpt2", "pipeline": pipeline, "passes": passes, "profile": profile,
                   "context": step.context, "prompt_tokens": context,
                   "decode": {"rounds": step.rounds, "bytes": step.bytes, "latency_s": round(step.latency_s, 4)},
                   "rerun": {"rounds": rerun.rounds, "bytes": rerun.bytes, "latency_s": round(rerun.latency_s, 4)},
                   "bytes_ratio": round(rerun.bytes / step.bytes, 2),
                   "latency_ratio": round(rerun.latency_s / step.latency_s, 2),
                   "network": "lan (the analyzer's default: 1 Gbit/s, 1 ms RTT)",
                   "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}
            append(out, row)
            rows[key] = row
            print(f"{key}: decode {step.bytes / 1e6:.1f} MB, {step.rounds} rounds; rerun {rerun.bytes / 1e6:.1f} MB "
                  f"({row['bytes_ratio']}x)", flush=True)


def show_private(rows: dict) -> None:
    print(f"{'engine':<8} {'model':<44} {'passes':<6} {'side':<6} | {'s/token meas (pred)':>20} | "
          f"{'rounds/step meas = pred':>23} | {'MB/step':>8} {'bytes err':>9} | tokens | load")
    for row in rows.values():
        for side in ("before", "after"):
            s = row["sides"][side]
            steps = s["steps"]
            meas = statistics.mean(x["seconds"] for x in steps)
            pred = statistics.mean(x["predicted_s"] for x in steps)
            rounds = f"{steps[0]['rounds']}..{steps[-1]['rounds']}"
            # CrypTen counts rounds as the analyzer does; SPU's are the owner's messages (not comparable)
            same = all(x["rounds"] == x["predicted_rounds"] for x in steps) if row["engine"] == "crypten" else None
            err = max(abs(x["bytes"] - x["predicted_bytes"]) / x["bytes"] for x in steps)
            mb = statistics.mean(x["bytes"] for x in steps) / 1e6
            label = "base" if side == "before" else row["pipeline"]
            tokens = "equal" if s["tokens_equal"] else f"ties {s['near_ties']}"
            print(f"{row['engine']:<8} {row['model']:<44} {row['pipeline']:<6} {label:<6} | {meas:>9.3f} ({pred:>7.3f}) | "
                  f"{rounds:>14} {'-' if same is None else 'yes' if same else 'NO':>8} | {mb:>8.3f} {err:>9.2%} | {tokens} | {row['load_average_1min']}")


def show_analyzer(rows: dict) -> None:
    print(f"{'profile':<12} {'passes':<9} {'C':>5} | {'decode MB':>10} {'rounds':>7} {'s (lan)':>8} | "
          f"{'rerun MB':>10} {'rounds':>7} {'s (lan)':>8} | {'bytes x':>8} {'latency x':>9}")
    for row in sorted(rows.values(), key=lambda r: (r["profile"], list(ANALYZER_PIPELINES).index(r["pipeline"]), r["context"])):
        d, r = row["decode"], row["rerun"]
        print(f"{row['profile']:<12} {row['pipeline']:<9} {row['prompt_tokens']:>5} | {d['bytes'] / 1e6:>10.1f} "
              f"{d['rounds']:>7} {d['latency_s']:>8.2f} | {r['bytes'] / 1e6:>10.1f} {r['rounds']:>7} {r['latency_s']:>8.2f} | "
              f"{row['bytes_ratio']:>8} {row['latency_ratio']:>9}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("private", "analyzer"), help="one kind of row (default: both)")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--pipelines", nargs="+", choices=list(PIPELINES), default=list(PIPELINES))
    parser.add_argument("--profiles", nargs="+", default=ANALYZER_PROFILES)
    parser.add_argument("--contexts", nargs="+", type=int, default=CONTEXTS)
    parser.add_argument("--out-private", type=Path, default=RESULTS / "generation_private.jsonl")
    parser.add_argument("--out-analyzer", type=Path, default=RESULTS / "generation_analyzer.jsonl")
    parser.add_argument("--show", action="store_true", help="print the recorded rows and exit")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    private, analyzer = read_rows(args.out_private), read_rows(args.out_analyzer)
    if not args.show:
        if args.only in (None, "analyzer"):
            run_analyzer_rows(analyzer, args.out_analyzer, args.profiles, list(ANALYZER_PIPELINES), args.contexts)
        if args.only in (None, "private"):
            for engine in args.engines:
                for model in args.models:
                    for pipeline in args.pipelines:
                        key = f"{engine}|{model}|{pipeline}"
                        if key in private:
                            continue
                        row = run_private_row(engine, model, pipeline)
                        if isinstance(row, str):
                            print(f"{key}: refused, not written ({row})", flush=True)
                            break  # the engine cannot generate: its other rows would be refused alike
                        append(args.out_private, row)
                        private[key] = row
                        print(f"{key}: done in {row['wall_s']} s", flush=True)
    show_private(private)
    print()
    show_analyzer(analyzer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
