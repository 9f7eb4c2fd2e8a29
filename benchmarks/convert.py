"""Convert a trained model to Softmax-only: LM fine-tuning vs distillation from the original, measured.

    python benchmarks/convert.py --tokens 320000 --seeds 0,1,2 --threads 1      # the committed table
    python benchmarks/convert.py --memory                                       # distillation memory vs plain
    python benchmarks/convert.py --suite gradual --seeds 0,1 --threads 1        # gradual conversion (below)

``--suite gradual`` (convert_gradual.py): a teacher trained on >= 10x the fine-tune budget, converted
one-shot (+ the best distillation recipe), gradually, gradually + distillation, against the pipeline
trained from scratch on the fine-tune budget; every (pipeline, row, seed) is a resumable part.

At the AERO study's scale (our GPT-2, 4 layers, d=128, 4 heads, vocab 4096, T=128, the stdlib corpus),
per seed: the baseline SM+LN+G trained from scratch for the budget (``--tokens``) is the "pretrained"
model; it is converted with ``--passes all`` (SM+ScFuFFN) and fine-tuned for ``--finetune`` x the budget:

  (a) LM loss only                   (b) --distill, KL on the logits only (--lm-weight 0)
  (b+) --distill, KL + LM (the defaults)
  (c) --distill, KL + hidden-state + attention-map terms (--lm-weight 0)
  (d) (c) with remove-layernorm{replace=weight-norm}    (e) (c) with the entropy regularizer on
  reference: Softmax-only (``all``) from scratch for the budget plus the fine-tune's tokens.

Then the regularizer question: Softmax-only from scratch with the entropy regularizer at each
``--lambdas`` (the reference row is lambda 0), same steps. Every row records val ppl, tokens, wall time,
head-entropy quarters and the distillation terms; results.json is rewritten after every row, so a cut
run keeps what it finished. ``--memory`` measures the peak resident memory of plain and distilling
fine-tunes (each in a fresh process, same batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's aero_compile, not an installed one

SPEC = "gpt2{n_layer=4,n_head=4,n_embd=128,vocab_size=4096}"
ALL_WEIGHT_NORM = ("canonicalize,remove-layernorm{replace=weight-norm},gelu-to-identity{relu=true,silu=true},"
                   "scale-ffn,fold-linear")  # `all` with the weight-norm replacement
FULL = dict(distill=True, distill_hidden=1.0, distill_attention=1.0, lm_weight=0.0)
ROWS = {  # label -> (passes, train overrides)
    "(a) LM only": ("all", {}),
    "(b) distill: KL only": ("all", dict(distill=True, lm_weight=0.0)),
    "(b+) distill: KL + LM (defaults)": ("all", dict(distill=True)),
    "(c) distill: KL + hidden + attention": ("all", FULL),
    "(d) (c) + weight-norm": (ALL_WEIGHT_NORM, FULL),
    "(e) (c) + entropy reg": ("all", dict(FULL, entropy_reg=True)),
}
BASELINE, REFERENCE = "baseline SM+LN+G (teacher)", "reference: Softmax-only from scratch"


def train_config(args, **overrides):
    from aero_compile.training import TrainConfig

    fields = dict(model=SPEC, batch_size=args.batch_size, seq_len=args.seq_len, corpus_max_bytes=args.corpus_max_bytes,
                  eval_batches=args.eval_batches, quiet=True, checkpoint_every=0, pictures=False, device="cpu",
                  entropy_reg=False, overwrite=True)
    return TrainConfig(**{**fields, **overrides})


def run_row(args, label: str, seed: int, out: Path, **config) -> dict:
    from aero_compile.training import train
    from aero_compile.training.pictures import quarter_shares

    config = train_config(args, seed=seed, out_dir=str(out / f"{_slug(label)}-s{seed}"), **config)
    started = time.perf_counter()
    result = train(config)
    metrics = result.metrics
    row = {"row": label, "seed": seed, "passes": config.passes, "init": config.init, "steps": config.steps,
           "tokens": metrics["tokens_seen"], "wall_s": round(time.perf_counter() - started, 1),
           "train_s": metrics["train_seconds"], "val_ppl_start": metrics["val_ppl_start"],
           "val_ppl_end": metrics["val_ppl_end"], "lambda": metrics["lambda"],
           "entropy_quarters": quarter_shares(result.entropies_after, math.log(args.seq_len))
           if result.entropies_after else None, "model": str(Path(config.out_dir) / "model.pt2")}
    if "distill" in metrics:
        row["distill"] = {key: metrics["distill"][key] for key in ("weights", "matched", "val_start", "val_end")}
    if metrics.get("reparametrized"):
        row["reparametrized"] = len([r for r in metrics["reparametrized"] if r["mode"] not in ("none",)
                                     and not r["mode"].startswith("none")])
    print(f"  {label} s{seed}: val ppl {row['val_ppl_start']:.2f} -> {row['val_ppl_end']:.2f}, "
          f"{row['tokens']:,} tokens, {row['wall_s']:.0f} s", flush=True)
    return row


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")[:40]


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    finetune_steps = max(1, round(steps * args.finetune))
    lambdas = [float(x) for x in args.lambdas.split(",")] if args.lambdas else []
    rows: list[dict] = []
    started = time.perf_counter()
    meta = {"spec": SPEC, "args": vars(args), "steps": steps, "finetune_steps": finetune_steps}

    def save(row: dict) -> None:
        rows.append(row)
        meta["elapsed_s"] = round(time.perf_counter() - started, 1)
        (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))

    for seed in seeds:
        print(f"seed {seed}", flush=True)
        base = run_row(args, BASELINE, seed, out, passes="none", init="random", steps=steps, lr=args.lr)
        save(base)
        for label, (passes, overrides) in ROWS.items():
            row = run_row(args, label, seed, out, model=base["model"], passes=passes, init="pretrained",
                          steps=finetune_steps, lr=args.finetune_lr, **overrides)
            row["teacher_ppl"] = base["val_ppl_end"]
            save(row)
        save(run_row(args, REFERENCE, seed, out, passes="all", init="random", steps=steps + finetune_steps,
                     lr=args.lr))
    for seed in seeds:  # the regularizer question, after every conversion row is in
        for lam in lambdas:
            save(run_row(args, f"Softmax-only from scratch, entropy reg lambda={lam:g}", seed, out, passes="all",
                         init="random", steps=steps + finetune_steps, lr=args.lr, entropy_reg=True,
                         entropy_lambda=lam))
    (out / "results.md").write_text(table({**meta, "rows": rows}))
    print(table({**meta, "rows": rows}))


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _paired(group: list[dict], reference: dict[int, float]) -> str:
    """Mean ± std over seeds of ppl / reference ppl of the same seed - 1 (the seeds' teachers differ)."""
    changes = [r["val_ppl_end"] / reference[r["seed"]] - 1 for r in group if r["seed"] in reference]
    if not changes:
        return ""
    spread = f" ± {statistics.stdev(changes):.1%}" if len(changes) > 1 else ""
    return f"{statistics.mean(changes):+.1%}{spread}"


def table(results: dict) -> str:
    """One line per row: val ppl mean ± std over seeds, paired changes against the teacher and against LM-only
    fine-tuning, tokens, wall time, head-entropy quarters."""
    groups: dict[str, list[dict]] = {}
    for row in results["rows"]:
        groups.setdefault(row["row"], []).append(row)
    teacher = {r["seed"]: r["val_ppl_end"] for r in groups.get(BASELINE, [])}
    lm_only = {r["seed"]: r["val_ppl_end"] for r in groups.get("(a) LM only", [])}
    lines = ["| row | seeds | val ppl (mean ± std) | vs teacher (paired) | vs (a) LM only (paired) | per seed | "
             "tokens (this run) | wall s (mean) | head-entropy quarters (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    for label, group in groups.items():
        ppl = [r["val_ppl_end"] for r in group]
        quarters = [r["entropy_quarters"] for r in group if r.get("entropy_quarters")]
        q = "/".join(f"{statistics.mean(col):.2f}" for col in zip(*quarters)) if quarters else "-"
        lines.append(f"| {label} | {len(group)} | {_mean_std(ppl)} | "
                     f"{_paired(group, teacher) if label != BASELINE else ''} | "
                     f"{_paired(group, lm_only) if label.startswith('(') and label != '(a) LM only' else ''} | "
                     f"{', '.join(f'{p:.2f}' for p in ppl)} | {group[0]['tokens']:,} | "
                     f"{statistics.mean(r['wall_s'] for r in group):.0f} | {q} |")
    converted = groups.get("(a) LM only", [])
    if converted:
        as_is = ", ".join(f"{r['val_ppl_start']:,.0f}" for r in converted)
        lines.append(f"\nConverted model before any fine-tune (`--passes all` on the teacher), val ppl per seed: {as_is}.")
    return "\n".join(lines) + "\n"


# -- memory: peak resident set of a plain and a distilling fine-tune, each in a fresh process ---------------
def memory_probe(args) -> None:
    """Run in a child: RSS after setup-free imports, then the peak RSS of a short fine-tune (KB -> MiB)."""
    import torch

    from aero_compile.training import train

    torch.manual_seed(0)
    rss_imports = _rss_mib()
    kind = args.memory_probe
    overrides = {"plain": {}, "distill-kl": dict(distill=True), "distill-full": FULL}[kind]
    train(train_config(args, model=args.memory_model, passes="all", init="pretrained", steps=args.memory_steps,
                       out_dir=str(Path(args.out) / f"memory-{kind}"), export_pt2=False, eval_batches=1,
                       **overrides))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "rss_after_imports_mib": rss_imports, "peak_rss_mib": peak}))


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.memory_model:  # a trained-shape model: the baseline built-in spec (weights do not matter here)
        args.memory_model = SPEC
    results = []
    for kind in ("plain", "distill-kl", "distill-full"):
        command = [sys.executable, __file__, "--memory-probe", kind, "--memory-model", args.memory_model,
                   "--out", str(out), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                   "--corpus-max-bytes", str(args.corpus_max_bytes), "--memory-steps", str(args.memory_steps)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        # Large blocks mmapped and returned on free: the peak RSS follows live tensors, not what malloc kept.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    plain = results[0]
    for r in results:
        r["peak_ratio"] = r["peak_rss_mib"] / plain["peak_rss_mib"]
        r["above_imports_ratio"] = ((r["peak_rss_mib"] - r["rss_after_imports_mib"])
                                    / (plain["peak_rss_mib"] - plain["rss_after_imports_mib"]))
    text = json.dumps({"spec": args.memory_model, "batch_size": args.batch_size, "seq_len": args.seq_len,
                       "steps": args.memory_steps, "results": results}, indent=1)
    (out / "memory.json").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if "--suite" in sys.argv[1:] and "gradual" in sys.argv[1:]:
        from convert_gradual import main as gradual_main  # this folder is on sys.path when run as a script

        return gradual_main([a for a in sys.argv[1:] if a not in ("--suite", "gradual")])
    parser.add_argument("--suite", choices=("recipes", "gradual"), default="recipes",
                        help="recipes: the distillation recipes (this file); gradual: convert_gradual.py")
    parser.add_argument("--tokens", type=int, default=320_000, help="the teacher's training budget (tokens)")
    parser.add_argument("--finetune", type=float, default=0.25, help="fine-tune budget, x --tokens")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lambdas", default="1e-5,1e-2", help="entropy-regularizer weights for the Softmax-only "
                                                               "from-scratch rows ('' to skip)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr from scratch (the study's)")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="peak lr of the fine-tunes (the study's)")
    parser.add_argument("--corpus-max-bytes", type=int, default=20_000_000)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="out/convert")
    parser.add_argument("--table", metavar="RESULTS_JSON", help="train nothing: print the table of a (partial) results.json")
    parser.add_argument("--memory", action="store_true", help="measure peak memory of plain vs distilling fine-tunes")
    parser.add_argument("--memory-model", help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.table:
        return print(table(json.loads(Path(args.table).read_text())))
    if args.memory_probe:
        return memory_probe(args)
    if args.memory:
        return memory(args)
    run(args)


if __name__ == "__main__":
    main()
