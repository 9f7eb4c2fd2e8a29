"""Gradual conversion of a teacher worth converting: ``python benchmarks/convert.py --suite gradual``.

Per seed, a teacher (the model with every LayerNorm, GELU and softmax: ``--passes none``) is trained from
scratch on ``--teacher-tokens``; the fine-tune budget is ``--finetune`` x that (<= 10%: the teacher has
seen >= 10x what the conversion may use). For each pipeline (``--pipelines``, ';'-separated), rows:

  one-shot + distill    the pipeline at step 0, then the best recipe of the recipes suite (KL + hidden-state
                        + attention-map terms, no LM term: row (c) of benchmarks/README.md; without the
                        attention term where an attention pass leaves no softmax map)
  gradual               --gradual (share x the fine-tune steps), LM loss only
  gradual + distill     --gradual and the same distillation terms
  from scratch          the pipeline trained from random weights on the fine-tune budget alone (what a
                        user without a teacher would do)

Every (row, pipeline, seed) is a part: its result is written to ``OUT/parts/*.json`` when it finishes and
a rerun skips it, so a cut run resumes where it stopped (a teacher too). ``results.json`` and
``results.md`` are rebuilt from the parts after each one. ``--table`` rebuilds them without training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's aero_compile

DEFAULT_MODEL = "gpt2{n_layer=4,n_head=4,n_embd=128,vocab_size=4096}"  # the AERO study's scale
DEFAULT_PIPELINES = "all;all,softmax-to-quad{norm=length};remove-layernorm"
DISTILL = dict(distill=True, distill_hidden=1.0, distill_attention=1.0, lm_weight=0.0)
ROWS = ("one-shot + distill", "gradual", "gradual + distill", "from scratch")
TEACHER = "teacher"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:60]


def _config(args, out: Path, **overrides):
    from aero_compile.training import TrainConfig

    fields = dict(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len, corpus_max_bytes=args.corpus_max_bytes,
                  eval_batches=args.eval_batches, quiet=True, checkpoint_every=0, pictures=False, device="cpu",
                  entropy_reg=False, overwrite=True, out_dir=str(out))
    return TrainConfig(**{**fields, **overrides})


def _part(args, name: str, seed: int, config_overrides: dict) -> dict:
    """Run one part unless its result exists; returns its row."""
    from aero_compile.fileio import write_json_atomic
    from aero_compile.training import train

    out = Path(args.out)
    path = out / "parts" / f"{_slug(name)}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    run_dir = out / "runs" / f"{_slug(name)}-s{seed}"
    config = _config(args, run_dir, seed=seed, **config_overrides)
    started = time.perf_counter()
    metrics = train(config).metrics
    trajectory = metrics.get("ppl_trajectory") or []
    row = {"part": name, "seed": seed, "passes": config.passes, "init": config.init, "steps": config.steps,
           "gradual": config.gradual, "distill": config.distill, "tokens": metrics["tokens_seen"],
           "wall_s": round(time.perf_counter() - started, 1), "val_ppl_start": metrics["val_ppl_start"],
           "val_ppl_end": metrics["val_ppl_end"], "val_ppl_export": metrics.get("val_ppl_export"),
           "val_ppl_max": max((p["val_ppl"] for p in trajectory), default=None), "trajectory": trajectory,
           "model": str(run_dir / "model.pt2"), "tokenizer": str(run_dir / "tokenizer.json")}
    write_json_atomic(path, row)
    print(f"  {name} s{seed}: val ppl {row['val_ppl_start']:.2f} -> {row['val_ppl_end']:.2f}"
          f" (export {row['val_ppl_export']:.2f}, max {row['val_ppl_max']:.2f}), {row['tokens']:,} tokens, "
          f"{row['wall_s']:.0f} s", flush=True)
    return row


def run(args) -> None:
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    pipelines = [p.strip() for p in args.pipelines.split(";") if p.strip()]
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    tokens_per_step = args.batch_size * args.seq_len
    teacher_steps = max(1, args.teacher_tokens // tokens_per_step)
    finetune_steps = max(1, round(teacher_steps * args.finetune))
    gradual_steps = max(1, round(finetune_steps * args.gradual_share))
    meta = {"model": args.model, "args": vars(args), "teacher_steps": teacher_steps, "finetune_steps": finetune_steps,
            "gradual_steps": gradual_steps}
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        teacher = _part(args, TEACHER, seed, dict(passes="none", init="random", steps=teacher_steps, lr=args.lr,
                                                  eval_every=0))
        source = dict(model=teacher["model"], tokenizer=teacher["tokenizer"], init="pretrained", steps=finetune_steps,
                      lr=args.finetune_lr, eval_every=max(1, finetune_steps // args.evals))
        for pipeline in pipelines:
            # an attention pass leaves no softmax map to match: the attention term goes
            distill = dict(DISTILL, distill_attention=0.0) if "softmax-to-" in pipeline else DISTILL
            plans = {"one-shot + distill": dict(source, passes=pipeline, **distill),
                     "gradual": dict(source, passes=pipeline, gradual=gradual_steps),
                     "gradual + distill": dict(source, passes=pipeline, gradual=gradual_steps, **distill),
                     "from scratch": dict(passes=pipeline, init="random", steps=finetune_steps, lr=args.lr,
                                          tokenizer=teacher["tokenizer"], eval_every=0)}
            for row in rows:
                _part(args, f"{row} | {pipeline}", seed, plans[row])
                write_results(out, meta)
    write_results(out, meta)
    print((out / "results.md").read_text())


def _load_parts(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))]


def write_results(out: Path, meta: dict) -> None:
    from aero_compile.fileio import write_json_atomic

    parts = _load_parts(out)
    write_json_atomic(out / "results.json", {**meta, "rows": parts})
    (out / "results.md").write_text(table(parts))


def _mean_std(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _paired(group: list[dict], reference: dict[int, float], key: str = "val_ppl_end") -> str:
    changes = [r[key] / reference[r["seed"]] - 1 for r in group if r["seed"] in reference and r.get(key)]
    if not changes:
        return ""
    spread = f" ± {statistics.stdev(changes):.1%}" if len(changes) > 1 else ""
    return f"{statistics.mean(changes):+.1%}{spread}"


def table(parts: list[dict]) -> str:
    """Per (pipeline, row): end ppl over seeds, paired change vs the teacher and vs from-scratch, the worst ppl
    during the run against the teacher's, the exported model's ppl."""
    groups: dict[str, list[dict]] = {}
    for row in parts:
        groups.setdefault(row["part"], []).append(row)
    teacher = {r["seed"]: r["val_ppl_end"] for r in groups.get(TEACHER, [])}
    lines = ["| pipeline | row | seeds | val ppl end (mean ± std) | vs teacher (paired) | vs from scratch (paired) | "
             "worst val ppl during the run / teacher's | exported model.pt2 ppl | ppl right after step 0 | tokens | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if TEACHER in groups:
        group = groups[TEACHER]
        lines.append(f"| none | teacher | {len(group)} | {_mean_std([r['val_ppl_end'] for r in group])} | | | | | | "
                     f"{group[0]['tokens']:,} | {statistics.mean(r['wall_s'] for r in group):.0f} |")
    pipelines = list(dict.fromkeys(name.partition(" | ")[2] for name in groups if name != TEACHER))
    ordered = sorted((name for name in groups if name != TEACHER),
                     key=lambda name: (pipelines.index(name.partition(" | ")[2]), ROWS.index(name.partition(" | ")[0])))
    for name in ordered:
        group = groups[name]
        row, _, pipeline = name.partition(" | ")
        scratch = {r["seed"]: r["val_ppl_end"] for r in groups.get(f"from scratch | {pipeline}", [])}
        worst = [r["val_ppl_max"] / teacher[r["seed"]] for r in group
                 if r.get("val_ppl_max") and r["seed"] in teacher and r["init"] == "pretrained"]
        exported = [r["val_ppl_export"] for r in group if r.get("val_ppl_export")]
        starts = [r["val_ppl_start"] for r in group] if row.startswith("one-shot") else []
        lines.append(f"| `{pipeline}` | {row} | {len(group)} | {_mean_std([r['val_ppl_end'] for r in group])} | "
                     f"{_paired(group, teacher)} | {_paired(group, scratch) if row != 'from scratch' else ''} | "
                     f"{', '.join(f'{w:.2f}x' for w in worst)} | {_mean_std(exported) if exported else ''} | "
                     f"{', '.join(f'{s:,.0f}' for s in starts)} | {group[0]['tokens']:,} | "
                     f"{statistics.mean(r['wall_s'] for r in group):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convert.py --suite gradual", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the teacher's architecture (a built-in spec)")
    parser.add_argument("--teacher-tokens", type=int, default=1_280_000, help="the teacher's training budget")
    parser.add_argument("--finetune", type=float, default=0.1, help="fine-tune budget, x --teacher-tokens (<= 0.1)")
    parser.add_argument("--gradual-share", type=float, default=0.5, help="--gradual as a share of the fine-tune steps")
    parser.add_argument("--pipelines", default=DEFAULT_PIPELINES, help="';'-separated pipelines")
    parser.add_argument("--rows", help=f"comma-separated subset of: {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr from scratch (teacher and from-scratch rows)")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="peak lr of the conversions")
    parser.add_argument("--evals", type=int, default=8, help="validations during each conversion (the trajectory)")
    parser.add_argument("--corpus-max-bytes", type=int, default=20_000_000)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="out/convert-gradual")
    parser.add_argument("--table", action="store_true", help="train nothing: rebuild results.json/md from the parts")
    args = parser.parse_args(argv)
    if not 0 < args.finetune <= 0.1:
        parser.error("--finetune must lie in (0, 0.1]: the teacher must have seen >= 10x the fine-tune budget")
    if args.rows and set(r.strip() for r in args.rows.split(",")) - set(ROWS):
        parser.error(f"--rows takes a subset of: {', '.join(ROWS)}")
    warnings.filterwarnings("ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.table:
        write_results(Path(args.out), {"model": args.model, "args": vars(args)})
        return print((Path(args.out) / "results.md").read_text())
    run(args)


if __name__ == "__main__":
    main()
