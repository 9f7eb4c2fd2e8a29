"""Reproduce the AERO study at small scale: every variant built by the pass pipeline, trained, costed, run privately.

    python benchmarks/aero_study.py                          # CPU default: 4 layers, d=128, T=128
    python benchmarks/aero_study.py --size gpt2 --tokens 200000000 --device cuda   # the paper's GPT-2 small

For each variant of the paper's table, from the same baseline, the same seed and token budget: the
validation perplexity after training from scratch; FFN and attention FLOPs; nonlinear op counts and
elements; the analyzer's rounds/bytes/latency under `bumblebee` (WAN) and `crypten` (LAN, WAN) at the
training context; CrypTen's measured rounds/bytes/seconds of a private forward at a short length; the
share of heads per entropy quarter. One table with savings against the baseline beside the paper's
ratios (shared/reference/aero_v2_gpt2_L12_T128.json); entropy heatmaps and a cost-vs-perplexity plot.
Every figure comes from this run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from aero_compile.report import ratio

# The paper's T=128 table, shipped with the cost analyzer (a copy of shared/reference/).
REFERENCE = Path(__file__).resolve().parents[1] / "aero_compile" / "cost" / "data" / "reference" / "aero_v2_gpt2_L12_T128.json"
SIZES = {  # name -> model overrides of our GPT-2
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
}
SOFTMAX_ONLY = "canonicalize,remove-layernorm,gelu-to-identity{relu=true,silu=true},scale-ffn"


@dataclass(frozen=True)
class Variant:
    label: str  # the paper's row name
    passes: str
    entropy_reg: bool = False
    temperature: str = "none"


def variants(n_layer: int) -> list[Variant]:
    fused = f"{SOFTMAX_ONLY},fold-linear"
    return [
        Variant("SM+LN+G", "none"),
        Variant("SM+LN+R", "gelu-to-relu"),
        Variant("SM+ScFFN", SOFTMAX_ONLY),
        Variant("SM+ScFuFFN", fused),
        Variant("SM+ScFuFFN, 6 deepest FFNs pruned", f"{fused},prune-ffn{{last={n_layer // 2}}}"),
        Variant("EReg(SM(t)+ScFuFFN)", fused, entropy_reg=True, temperature="position"),
    ]


def flops_by_part(gm, seq_len: int) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of linear layers and matmuls, split into FFN / attention / other."""
    from aero_compile.blocks import ffn_blocks, linear_parts
    from aero_compile.ops import OpKind, classify_graph
    from aero_compile.shapes import numel, propagate_shapes

    metas = propagate_shapes(gm, seq_len=seq_len)
    ffn_nodes = {node for block in ffn_blocks(gm) for node in block.nodes}
    totals = {"ffn": 0.0, "attention": 0.0, "other": 0.0}
    for op in classify_graph(gm):
        if op.kind not in (OpKind.LINEAR, OpKind.MATMUL) or op.output not in metas:
            continue
        if op.kind is OpKind.LINEAR:
            parts = linear_parts(gm, op.output)
            inner = parts.weight.shape[1] if parts is not None else metas[op.inputs[0]].shape[-1]
        else:
            inner = metas[op.inputs[0]].shape[-1]
        flops = 2.0 * numel(metas[op.output].shape) * inner
        part = "ffn" if op.output in ffn_nodes else ("attention" if op.layer is not None else "other")
        totals[part] += flops
    return totals


def paper_rows() -> dict[str, dict]:
    reference = json.loads(REFERENCE.read_text())
    return {row["config"]: row for row in reference["rows"]}


def study_variant(variant: Variant, args, spec: str, out: Path) -> dict:
    """Train one variant from scratch and measure everything the table shows."""
    from aero_compile.cost import analyze
    from aero_compile.records import to_json
    from aero_compile.report import summarize_graph
    from aero_compile.targets.crypten.runner import run_private
    from aero_compile.training import TrainConfig, train
    from aero_compile.training.pictures import quarter_shares

    run_dir = out / variant.label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("+", "-")
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    config = TrainConfig(model=spec, passes=variant.passes or "none", steps=steps, init="random", lr=args.lr,
                         batch_size=args.batch_size, seq_len=args.seq_len, entropy_reg=variant.entropy_reg,
                         temperature=variant.temperature, out_dir=str(run_dir), device=args.device,
                         seed=args.seed, corpus_max_bytes=args.corpus_max_bytes, quiet=args.quiet,
                         eval_batches=args.eval_batches, checkpoint_every=0)
    started = time.perf_counter()
    result = train(config)
    gm = result.graph_module
    row = {"variant": variant.label, "passes": variant.passes, "entropy_reg": variant.entropy_reg,
           "temperature": variant.temperature, "steps": steps, "train_seconds": time.perf_counter() - started,
           "val_ppl_start": result.metrics["val_ppl_start"], "val_ppl_end": result.metrics["val_ppl_end"],
           "flops": flops_by_part(gm, args.seq_len), "ops": to_json(summarize_graph(gm, args.seq_len)),
           "entropy_quarters": quarter_shares(result.entropies_after, math.log(args.seq_len)),
           "pictures": result.metrics.get("outputs", {})}
    row["cost"] = {}
    for profile, network in (("bumblebee", "wan"), ("crypten", "lan"), ("crypten", "wan")):
        cost = analyze(gm, profile=profile, network=network, seq_len=args.seq_len)
        row["cost"][f"{profile}/{network}"] = {"rounds": cost.rounds, "bytes": cost.bytes, "latency_s": cost.latency_s}
    if args.private_seq_len:
        measured = run_private({variant.label: gm}, seq_len=args.private_seq_len)[variant.label]
        row["crypten_measured"] = {key: measured[key] for key in ("rounds", "bytes", "seconds", "max_abs_error",
                                                                  "argmax_agreement", "provider", "seq_len")}
    return row


def table(rows: list[dict], paper: dict[str, dict]) -> str:
    """Markdown: each variant's figures, savings as ratios against the first row, the paper's ratios."""
    base = rows[0]
    base_paper = paper.get(base["variant"])
    head = ("| variant | val ppl | FFN GFLOP | attn GFLOP | LN/GELU/ReLU/softmax elements | bumblebee WAN GB / min "
            "| crypten LAN s | crypten WAN s | measured rounds / MB / s | heads per entropy quarter "
            "| comm saving (ours / paper) | latency saving (ours / paper) | paper ppl |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        elements = row["ops"]["op_elements"]
        nonlinear = "/".join(f"{elements.get(k, 0):,}" for k in ("layernorm", "gelu", "relu", "softmax"))
        bb = row["cost"]["bumblebee/wan"]
        measured = row.get("crypten_measured")
        measured_text = (f"{measured['rounds']} / {measured['bytes'] / 1e6:.1f} / {measured['seconds']:.1f}"
                         if measured else "")
        ours_comm = ratio(base["cost"]["bumblebee/wan"]["bytes"], bb["bytes"])
        ours_lat = ratio(base["cost"]["bumblebee/wan"]["latency_s"], bb["latency_s"])
        p = paper.get(row["variant"])
        paper_comm = ratio(base_paper["comm_gb"], p["comm_gb"]) if p and base_paper else None
        paper_lat = ratio(base_paper["latency_min"], p["latency_min"]) if p and base_paper else None
        fmt = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
        lines.append(
            f"| {row['variant']} | {row['val_ppl_end']:.2f} | {row['flops']['ffn'] / 1e9:.3f} | "
            f"{row['flops']['attention'] / 1e9:.3f} | {nonlinear} | {bb['bytes'] / 1e9:.3f} / {bb['latency_s'] / 60:.2f} | "
            f"{row['cost']['crypten/lan']['latency_s']:.2f} | {row['cost']['crypten/wan']['latency_s']:.1f} | {measured_text} | "
            f"{' / '.join(f'{q:.2f}' for q in row['entropy_quarters'])} | {fmt(ours_comm)} / {fmt(paper_comm)} | "
            f"{fmt(ours_lat)} / {fmt(paper_lat)} | {p['ppl'] if p else '-'} |")
    return "\n".join(lines)


def plot_cost_vs_ppl(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from aero_compile.fileio import atomic_path

    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for row in rows:
        latency = row["cost"]["bumblebee/wan"]["latency_s"] / 60
        axis.scatter(latency, row["val_ppl_end"])
        axis.annotate(row["variant"], (latency, row["val_ppl_end"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axis.set_xlabel("predicted private latency, bumblebee WAN (minutes)")
    axis.set_ylabel("validation perplexity")
    axis.set_title("cost vs perplexity, one point per variant")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=2_560_000, help="training tokens per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="training and analysed context (the paper's: 128)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--private-seq-len", type=int, default=16, help="length of the measured CrypTen forward (0: skip)")
    parser.add_argument("--corpus-max-bytes", type=int, default=20_000_000)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated variant labels to run (default: all)")
    parser.add_argument("--out", default="out/aero_study")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    size = SIZES[args.size]
    spec = "gpt2{" + ",".join(f"{k}={v}" for k, v in {**size, "vocab_size": args.vocab_size,
                                                          "block_size": max(args.seq_len, 128)}.items()) + "}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = variants(size["n_layer"])
    if args.only:
        wanted = {label.strip() for label in args.only.split(";")}
        chosen = [v for v in chosen if v.label in wanted or v is chosen[0]]
    started = time.perf_counter()
    rows = []
    for variant in chosen:
        print(f"== {variant.label}: passes '{variant.passes}', entropy_reg={variant.entropy_reg}", flush=True)
        rows.append(study_variant(variant, args, spec, out))
        row = rows[-1]
        print(f"   val ppl {row['val_ppl_start']:.1f} -> {row['val_ppl_end']:.2f}, trained in {row['train_seconds']:.0f} s, "
              f"{(time.perf_counter() - started) / 60:.1f} min so far", flush=True)
    paper = paper_rows()
    text = table(rows, paper)
    elapsed = time.perf_counter() - started
    print(text)
    print(f"\nmodel {spec}, {args.tokens:,} tokens per variant, T={args.seq_len}, {elapsed / 60:.1f} min in all")
    from aero_compile.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(out / "results.json", {"model": spec, "args": vars(args), "seconds": elapsed, "rows": rows})
    write_text_atomic(out / "table.md", text + "\n")
    plot_cost_vs_ppl(rows, out / "cost_vs_ppl.png")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'cost_vs_ppl.png'} and per-variant entropy pictures")


if __name__ == "__main__":
    main()
