"""Reproduce the AERO study at small scale: every variant built by the pass pipeline, trained, costed, run privately.

    python benchmarks/aero_study.py                          # CPU default: 4 layers, d=128, T=128
    python benchmarks/aero_study.py --size gpt2 --tokens 200000000 --device cuda   # the paper's GPT-2 small
    python benchmarks/aero_study.py --suite attention --tokens 640000              # attention passes, seeds 0,1

For each variant of the paper's table, from the same baseline, the same seed and token budget: the
validation perplexity after training from scratch; FFN and attention FLOPs; nonlinear op counts and
elements; the analyzer's rounds/bytes/latency under `bumblebee` (WAN) and `crypten` (LAN, WAN) at the
training context; CrypTen's measured rounds/bytes/seconds of a private forward at a short length; the
share of heads per entropy quarter. One table with savings against the baseline beside the paper's
ratios (shared/reference/aero_v2_gpt2_L12_T128.json); entropy heatmaps and a cost-vs-perplexity plot.
Every figure comes from this run.

``--suite attention``: the attention passes on top of SM+ScFuFFN, every row at every seed of ``--seeds``
(default 0,1): the ReLU, quadratic and max-free forms trained from scratch with the pass in the
pipeline, and linearize-heads applied to the trained SM+ScFuFFN model of the same seed, evaluated as is
and after a short fine-tune (``--finetune`` of the budget, ``--finetune-lr``), beside the same fine-tune
with no pass (control: what the extra tokens alone buy). One table of mean and per-seed perplexity, and a
cost-vs-perplexity plot (crypten WAN latency and bumblebee WAN bytes) with the Pareto front marked.
A row whose private CrypTen run fails records the error and the study goes on. Seeds can run as
separate processes (``--seeds 0 --out A``, ``--seeds 1 --out B``) and be joined with ``--merge A/results.json
B/results.json --out C``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from aero_compile.errors import describe
from aero_compile.records import ratio

# The paper's T=128 table, shipped with the cost analyzer (a copy of shared/reference/).
REFERENCE = Path(__file__).resolve().parents[1] / "aero_compile" / "cost" / "data" / "reference" / "aero_v2_gpt2_L12_T128.json"
SIZES = {  # name -> model overrides of our GPT-2
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
}
SOFTMAX_ONLY = "canonicalize,remove-layernorm,gelu-to-identity{relu=true,silu=true},scale-ffn"
FUSED = f"{SOFTMAX_ONLY},fold-linear"
LINEARIZE = "linearize-heads{tokens=corpus}"


@dataclass(frozen=True)
class Variant:
    label: str  # the paper's row name
    passes: str
    entropy_reg: bool = False
    temperature: str = "none"
    # A derived row: ``passes`` applied to the trained model (model.pt2) of variant ``base`` at the same
    # seed, then fine-tuned for ``finetune`` x the budget (init pretrained); with ``as_is`` the model
    # straight after the passes (before the fine-tune) is a row of its own.
    base: str | None = None
    finetune: float = 0.0
    as_is: bool = False
    key: str = ""  # a short name for --only (labels contain commas and spaces)


def variants(n_layer: int) -> list[Variant]:
    fused = FUSED
    return [
        Variant("SM+LN+G", "none", key="baseline"),
        Variant("SM+LN+R", "gelu-to-relu", key="relu"),
        Variant("SM+ScFFN", SOFTMAX_ONLY, key="scffn"),
        Variant("SM+ScFuFFN", fused, key="fused"),
        Variant("SM+ScFuFFN, 6 deepest FFNs pruned", f"{fused},prune-ffn{{last={n_layer // 2}}}", key="pruned"),
        Variant("EReg(SM(t)+ScFuFFN)", fused, entropy_reg=True, temperature="position", key="ereg"),
    ]


def attention_variants(finetune: float) -> list[Variant]:
    """The attention passes on top of SM+ScFuFFN, in the order they run (and are cut, last first)."""
    return [
        Variant("SM+ScFuFFN", FUSED, key="fused"),
        Variant("+ relu/length", f"{FUSED},softmax-to-relu{{norm=length}}", key="relu-length"),
        Variant("+ quad/sum", f"{FUSED},softmax-to-quad", key="quad-sum"),
        # In plaintext exp(s - b) / sum is softmax for any b: the trained model's own function with the
        # offsets calibrated on it, as is; the same pass trained from scratch (b from the random init) last.
        Variant("+ no-max (on trained)", "softmax-no-max", base="SM+ScFuFFN", key="no-max-trained"),
        Variant("+ no-max{corpus} (on trained)", "softmax-no-max{tokens=corpus}", base="SM+ScFuFFN", key="no-max-corpus-trained"),
        Variant("+ linearize-heads", LINEARIZE, base="SM+ScFuFFN", finetune=finetune, as_is=True, key="linearize"),
        Variant("SM+ScFuFFN, fine-tuned (control)", "none", base="SM+ScFuFFN", finetune=finetune, key="control"),
        Variant("+ linearize-heads + quad/length", f"{LINEARIZE},softmax-to-quad{{norm=length}}", base="SM+ScFuFFN",
                finetune=finetune, as_is=True, key="linearize-quad-length"),
        Variant("+ quad/length", f"{FUSED},softmax-to-quad{{norm=length}}", key="quad-length"),
        Variant("+ no-max (from scratch)", f"{FUSED},softmax-no-max", key="no-max"),
    ]


def select_variants(chosen: list[Variant], only: str, error) -> list[Variant]:
    """The variants named in ``only`` (comma-separated keys), the reference (first row) always kept.

    A derived row needs its base trained at the same seed, so the base comes along too. An unknown key
    calls ``error`` with the keys there are (argparse's ``parser.error``: one line, exit 2).
    """
    wanted = [key.strip() for key in only.split(",") if key.strip()]
    known = {variant.key for variant in chosen}
    unknown = [key for key in wanted if key not in known]
    if unknown or not wanted:
        error(f"--only: unknown variant key(s) {', '.join(unknown) or repr(only)}; "
              f"the keys are: {', '.join(v.key for v in chosen)}")
    bases = {variant.base for variant in chosen if variant.key in wanted and variant.base}
    return [v for v in chosen if v is chosen[0] or v.key in wanted or v.label in bases]


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


def run_dir_of(out: Path, label: str, seed: int, seeds: list[int]) -> Path:
    name = label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("+", "-").replace("/", "-")
    return out / name / f"seed{seed}" if len(seeds) > 1 else out / name


def measure(gm, row: dict, args, name: str) -> dict:
    """Fill ``row`` with what the table shows of a trained graph: FLOPs, ops, analyzer costs, a private forward."""
    from aero_compile.records import to_json
    from aero_compile.report import summarize_graph
    from aero_compile.targets.crypten.runner import run_private

    row["flops"] = flops_by_part(gm, args.seq_len)
    offsets = {name: buffer.flatten().tolist() for name, buffer in gm.named_buffers() if name.startswith("attn_offset")}
    if offsets:  # softmax-no-max's public per-head offsets b, calibrated when the pass ran
        row["no_max_offsets"] = offsets
    row["ops"] = to_json(summarize_graph(gm, args.seq_len))
    price(gm, row, args)
    if args.private_seq_len:
        try:
            measured = run_private({name: gm}, seq_len=args.private_seq_len)[name]
            row["crypten_measured"] = {key: measured[key] for key in ("rounds", "bytes", "seconds", "max_abs_error",
                                                                      "argmax_agreement", "provider", "seq_len")}
        except Exception as exc:  # a form the CrypTen lowering cannot run yet: say so in the row, go on
            row["crypten_error"] = describe(exc)
    return row


def price(gm, row: dict, args) -> dict:
    """The analyzer's costs of a graph: bumblebee WAN, crypten LAN/WAN at the training context, crypten at T_private."""
    from aero_compile.cost import analyze

    row["cost"] = {}
    for profile, network in (("bumblebee", "wan"), ("crypten", "lan"), ("crypten", "wan")):
        cost = analyze(gm, profile=profile, network=network, seq_len=args.seq_len)
        row["cost"][f"{profile}/{network}"] = {"rounds": cost.rounds, "bytes": cost.bytes, "latency_s": cost.latency_s}
    if args.private_seq_len:
        predicted = analyze(gm, profile="crypten", network="lan", seq_len=args.private_seq_len)
        row["crypten_predicted"] = {"rounds": predicted.rounds, "bytes": predicted.bytes, "seq_len": args.private_seq_len}
    return row


def recost(args) -> None:
    """Train nothing: price every row of a results.json again under the profiles of this checkout.

    A trained row's graph is its model.pt2; a row that is a trained model after passes, as is, is rebuilt
    by the same (deterministic) passes. The costs of the run are kept as ``cost_at_run``; the measured
    private forwards are the run's.
    """
    from types import SimpleNamespace

    from aero_compile.capturing import capture
    from aero_compile.loader import load_model

    results = json.loads(Path(args.recost).read_text())
    run_args = SimpleNamespace(**{**results["args"], "private_seq_len": args.private_seq_len})
    graphs, by_label, failed = {}, {}, {}
    key_of = lambda row: (row.get("pictures") or {}).get("pt2") or (row["base_model"], row["passes"])  # noqa: E731
    for row in results["rows"]:
        key = key_of(row)
        if key in graphs or key in failed:
            continue
        try:
            graphs[key] = capture(load_model(key), name=key) if isinstance(key, str) else apply_passes(*key)[1]
            by_label.setdefault(row["variant"], graphs[key])
        except Exception as exc:  # e.g. a model whose weights went NaN: its structure is its variant's
            failed[key] = describe(exc)
    for row in results["rows"]:
        key = key_of(row)
        if key in failed:
            row["recost_note"] = f"{failed[key]}; priced on another seed's graph of the same variant"
        row.setdefault("cost_at_run", {"cost": row["cost"], "crypten_predicted": row.get("crypten_predicted")})
        price(graphs[key] if key in graphs else by_label[row["variant"]], row, run_args)
        print(f"   {row['variant']} (seed {row['seed']}): bumblebee WAN {row['cost_at_run']['cost']['bumblebee/wan']['bytes'] / 1e9:.3f}"
              f" -> {row['cost']['bumblebee/wan']['bytes'] / 1e9:.3f} GB, crypten WAN rounds "
              f"{row['cost_at_run']['cost']['crypten/wan']['rounds']} -> {row['cost']['crypten/wan']['rounds']}", flush=True)
    out = Path(args.out or Path(args.recost).parent)
    out.mkdir(parents=True, exist_ok=True)
    meta = {key: value for key, value in results.items() if key not in ("rows", "suite")}
    print(write_outputs(out, results["suite"], results["rows"], {**meta, "recosted_at": git_state()}))


def train_config(args, **overrides):
    from aero_compile.training import TrainConfig

    fields = dict(batch_size=args.batch_size, seq_len=args.seq_len, device=args.device,
                  corpus_max_bytes=args.corpus_max_bytes, quiet=args.quiet, eval_batches=args.eval_batches,
                  checkpoint_every=0)
    return TrainConfig(**{**fields, **overrides})


def study_variant(variant: Variant, args, spec: str, out: Path, seed: int, seeds: list[int]) -> list[dict]:
    """One variant at one seed: trained from scratch, or derived from its base's trained model; measured."""
    from aero_compile.training import train
    from aero_compile.training.pictures import quarter_shares

    if variant.base is not None:
        return derived_variant(variant, args, out, seed, seeds)
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    config = train_config(args, model=spec, passes=variant.passes or "none", steps=steps, init="random", lr=args.lr,
                          entropy_reg=variant.entropy_reg, temperature=variant.temperature,
                          out_dir=str(run_dir_of(out, variant.label, seed, seeds)), seed=seed)
    started = time.perf_counter()
    result = train(config)
    row = {"variant": variant.label, "seed": seed, "passes": variant.passes, "entropy_reg": variant.entropy_reg,
           "temperature": variant.temperature, "tokens_budget": args.tokens, "steps": steps,
           "train_seconds": time.perf_counter() - started, "val_ppl_start": result.metrics["val_ppl_start"],
           "val_ppl_end": result.metrics["val_ppl_end"],
           "entropy_quarters": quarter_shares(result.entropies_after, math.log(args.seq_len))
           if result.entropies_after else None, "pictures": result.metrics.get("outputs", {})}
    return [measure(result.graph_module, row, args, f"{variant.label} s{seed}")]


def derived_variant(variant: Variant, args, out: Path, seed: int, seeds: list[int]) -> list[dict]:
    """``variant.passes`` on the base's trained model of this seed: the model as is, and/or fine-tuned."""
    from aero_compile.training import train

    base_model = str(run_dir_of(out, variant.base, seed, seeds) / "model.pt2")
    common = {"seed": seed, "passes": variant.passes, "entropy_reg": False, "temperature": "none",
              "tokens_budget": args.tokens, "base": variant.base, "base_model": base_model}
    rows = []
    if variant.passes != "none":
        notes, graph = apply_passes(base_model, variant.passes)
        common["pass_notes"] = notes
        if variant.as_is or not variant.finetune:
            ppl = evaluate_graph(graph, args, base_model)
            row = {**common, "variant": f"{variant.label}, as is" if variant.finetune else variant.label, "steps": 0,
                   "train_seconds": 0.0, "val_ppl_start": ppl, "val_ppl_end": ppl, "entropy_quarters": None,
                   "tokens_total": args.tokens}
            rows.append(measure(graph, row, args, f"{variant.label} as is s{seed}"))
    if variant.finetune:
        steps = max(1, round(args.tokens // (args.batch_size * args.seq_len) * variant.finetune))
        config = train_config(args, model=base_model, passes=variant.passes, steps=steps, init="pretrained",
                              lr=args.finetune_lr, entropy_reg=False, seed=seed,
                              out_dir=str(run_dir_of(out, variant.label, seed, seeds)))
        started = time.perf_counter()
        result = train(config)
        row = {**common, "variant": f"{variant.label}, fine-tuned" if variant.as_is else variant.label,
               "steps": steps, "train_seconds": time.perf_counter() - started,
               "val_ppl_start": result.metrics["val_ppl_start"], "val_ppl_end": result.metrics["val_ppl_end"],
               "entropy_quarters": None, "tokens_total": args.tokens + steps * args.batch_size * args.seq_len,
               "pictures": result.metrics.get("outputs", {})}
        rows.append(measure(result.graph_module, row, args, f"{variant.label} s{seed}"))
    return rows


def evaluate_graph(gm, args, model: str) -> float:
    """Validation perplexity of a graph on the windows every training run of the study evaluates on."""
    import torch

    from aero_compile.graph_info import graph_info
    from aero_compile.training.corpus import load_corpus
    from aero_compile.training.data import TokenData, val_batches
    from aero_compile.training.evaluate import evaluate
    from aero_compile.training.model import make_trainable
    from aero_compile.training.tokenizer import resolve_tokenizer

    config = train_config(args, model=model, entropy_reg=False)
    corpus = load_corpus(config.data, val_fraction=config.val_fraction, max_bytes=config.corpus_max_bytes)
    tokenizer, _ = resolve_tokenizer(config.tokenizer, model, graph_info(gm).vocab_size or 0, corpus.train, corpus.key,
                                     config.cache_path)
    data = TokenData.build(corpus, tokenizer, config.cache_path)
    batches = val_batches(data.val, config.batch_size, config.seq_len, config.eval_batches)
    return evaluate(make_trainable(gm, config), batches, torch.device("cpu")).ppl


def apply_passes(model: str, passes: str):
    """``passes`` on a trained model: their notes (heads linearized, per-head drift) and the graph after them."""
    from aero_compile.capturing import capture
    from aero_compile.loader import load_model
    from aero_compile.pass_manager import PassManager

    result = PassManager.from_pipeline(passes).run(capture(load_model(model), name=model))
    notes = {record.name: {"changed": record.changed, "max_abs_diff": record.max_abs_diff, "notes": record.notes}
             for record in result.report.passes}
    return notes, result.graph_module


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


def by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    return groups


def seeds_text(values: list, fmt, sep: str = "; ") -> str:
    """One figure when every seed gives the same, else the per-seed figures joined by ``sep``."""
    texts = [fmt(value) for value in values]
    return texts[0] if len(set(texts)) == 1 else sep.join(texts)


def linearized_text(row: dict) -> str:
    record = (row.get("pass_notes") or {}).get("linearize-heads")
    if not record:
        return ""
    kinds = [note.rsplit("-> ", 1)[1].split(",")[0] for note in record["notes"] if "-> " in note]
    decided = [kind for kind in kinds if kind != "softmax"]
    shapes = ", ".join(f"{decided.count(kind)} {kind}" for kind in sorted(set(decided)))
    drift = f"; drift {record['max_abs_diff']:.2f}" if record.get("max_abs_diff") is not None else ""
    return f"{record['changed']}/{len(kinds)} heads ({shapes}){drift}" if decided else f"0/{len(kinds)} heads"


def attention_table(rows: list[dict]) -> str:
    """Markdown, one line per variant: perplexity per seed and mean, costs, the measured private forward."""
    groups = by_variant(rows)
    reference = next(iter(groups.values()))
    ref_ppl = sum(r["val_ppl_end"] for r in reference) / len(reference)
    ref_bb = reference[0]["cost"]["bumblebee/wan"]["bytes"]
    ref_cw = reference[0]["cost"]["crypten/wan"]["latency_s"]
    head = ("| variant | val ppl per seed | mean (vs ref) | crypten rounds / GB | crypten LAN s | crypten WAN s (saving) "
            "| bumblebee WAN GB (saving) / min | measured CrypTen T=16: rounds (pred.) / MB / s / max abs err / argmax agree "
            "| linearized heads; drift |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, group in groups.items():
        ppls = [r["val_ppl_end"] for r in group]
        mean = sum(ppls) / len(ppls)
        cost = lambda key, field: [r["cost"][key][field] for r in group]  # noqa: E731
        measured = []
        for r in group:
            m = r.get("crypten_measured")
            if m:
                measured.append(f"{m['rounds']} ({r['crypten_predicted']['rounds']}) / {m['bytes'] / 1e6:.1f} / "
                                f"{m['seconds']:.1f} / {m['max_abs_error']:.3g} / {m['argmax_agreement']:.2f}")
            else:
                measured.append(f"failed: {r.get('crypten_error', 'not run')}"[:160])
        lines.append(
            f"| {label} | {' / '.join(f'{p:.2f}' for p in ppls)} | {mean:.2f} ({mean / ref_ppl - 1:+.1%}) | "
            f"{seeds_text(cost('crypten/wan', 'rounds'), str)} / {seeds_text(cost('crypten/wan', 'bytes'), lambda b: f'{b / 1e9:.3f}')} | "
            f"{seeds_text(cost('crypten/lan', 'latency_s'), lambda x: f'{x:.3f}')} | "
            f"{seeds_text(cost('crypten/wan', 'latency_s'), lambda x: f'{x:.1f} ({ref_cw / x:.2f}x)')} | "
            f"{seeds_text(cost('bumblebee/wan', 'bytes'), lambda b: f'{b / 1e9:.3f} ({ref_bb / b:.2f}x)')} / "
            f"{seeds_text(cost('bumblebee/wan', 'latency_s'), lambda x: f'{x / 60:.2f}')} | "
            f"{seeds_text(measured, str)} | {seeds_text([linearized_text(r) for r in group], str)} |")
    return "\n".join(lines)


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both cost and perplexity (lower is better for both)."""
    front, best = [], math.inf
    for cost, ppl, label in sorted(points):
        if ppl < best:
            front.append((cost, ppl, label))
            best = ppl
    return front


ACCURACY_BAR = 0.99  # argmax agreement of the private forward with plaintext, as the bar


def private_ok(group: list[dict]) -> bool:
    """Every seed's private forward ran and agreed with plaintext on >= ACCURACY_BAR of the argmaxes."""
    return all((r.get("crypten_measured") or {}).get("argmax_agreement", 0.0) >= ACCURACY_BAR
               and math.isfinite(r["val_ppl_end"]) for r in group)


def plot_attention(rows: list[dict], path: Path) -> None:
    """Two panels, crypten WAN latency and bumblebee WAN bytes against mean val ppl (bars: seed range).

    Squares are fine-tuned rows (more tokens than the budget); crosses are variants whose private forward
    misses the accuracy bar, left out of the Pareto front; a variant with a NaN seed is not drawn.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from aero_compile.fileio import atomic_path

    colors = colormaps["tab20"]
    figure = Figure(figsize=(13, 7.5), layout="constrained")
    FigureCanvasAgg(figure)
    panels = (("crypten/wan", "latency_s", 1.0, "predicted latency, crypten WAN, T=128 (s)"),
              ("bumblebee/wan", "bytes", 1e9, "predicted communication, bumblebee WAN, T=128 (GB)"))
    groups = list(by_variant(rows).items())
    axes = figure.subplots(1, 2)
    for axis, (key, field, scale, xlabel) in zip(axes, panels):
        points = []
        for number, (label, group) in enumerate(groups, 1):
            ppls = [r["val_ppl_end"] for r in group]
            mean = sum(ppls) / len(ppls)
            if not math.isfinite(mean):
                continue
            x = sum(r["cost"][key][field] for r in group) / len(group) / scale
            marker = ("x" if not private_ok(group) else
                      "s" if group[0].get("tokens_total", 0) > group[0]["tokens_budget"] else "o")
            axis.errorbar(x, mean, yerr=[[mean - min(ppls)], [max(ppls) - mean]], fmt=marker, capsize=3,
                          color=colors((number - 1) % 20), label=f"{number}: {label}")
            axis.annotate(str(number), (x, mean), fontsize=8, xytext=(4, 3), textcoords="offset points")
            if private_ok(group):
                points.append((x, mean, label))
        front = pareto(points)
        axis.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=1, marker="o", markersize=13,
                  markerfacecolor="none", label="Pareto front (private forward within the bar)")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("validation perplexity (mean over seeds; bar: seed range)")
    skipped = [label for label, group in groups if not all(math.isfinite(r["val_ppl_end"]) for r in group)]
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8,
                  title="o trained on the budget, s fine-tuned (more tokens), x private forward below "
                        f"{ACCURACY_BAR:.0%} argmax agreement" + (f"; not drawn (NaN): {', '.join(skipped)}" if skipped else ""),
                  title_fontsize=8)
    figure.suptitle("attention variants on SM+ScFuFFN: cost vs perplexity")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def git_state() -> dict:
    root = Path(__file__).resolve().parents[1]
    run = lambda *cmd: subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"commit": run("rev-parse", "HEAD"), "modified": run("status", "--short", "--untracked-files=no").splitlines()}


def write_outputs(out: Path, suite: str, rows: list[dict], meta: dict) -> str:
    from aero_compile.fileio import write_json_atomic, write_text_atomic

    text = attention_table(rows) if suite == "attention" else table(rows, paper_rows())
    write_json_atomic(out / "results.json", {**meta, "suite": suite, "rows": rows})
    write_text_atomic(out / "table.md", text + "\n")
    (plot_attention if suite == "attention" else plot_cost_vs_ppl)(rows, out / "cost_vs_ppl.png")
    return text


def merge(args) -> None:
    """Rows of several runs (one per seed, say) in one table: variants in first-seen order, then by seed."""
    runs = [json.loads(Path(path).read_text()) for path in args.merge]
    rows = [row for run in runs for row in run["rows"]]
    order = list(dict.fromkeys(row["variant"] for row in rows))
    rows.sort(key=lambda row: (order.index(row["variant"]), row["seed"]))
    out = Path(args.out or f"out/{runs[0]['suite']}_study")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": runs[0]["model"], "args": runs[0]["args"], "seeds": sorted({row["seed"] for row in rows}),
            "merged_from": [{"path": path, "seconds": run["seconds"], "git": run.get("git")}
                            for path, run in zip(args.merge, runs)],
            "seconds": max(run["seconds"] for run in runs)}
    print(write_outputs(out, runs[0]["suite"], rows, meta))
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'cost_vs_ppl.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("aero", "attention"), default="aero",
                        help="aero: the paper's table; attention: the attention passes on SM+ScFuFFN")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=2_560_000, help="training tokens per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="training and analysed context (the paper's: 128)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--finetune", type=float, default=0.25, help="fine-tune budget of derived rows, x --tokens")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="peak lr of the fine-tunes")
    parser.add_argument("--private-seq-len", type=int, default=16, help="length of the measured CrypTen forward (0: skip)")
    parser.add_argument("--corpus-max-bytes", type=int, default=20_000_000)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", help="comma-separated seeds, every row at each (default: 0; attention suite: 0,1)")
    parser.add_argument("--seed", type=int, help="one seed (the same as --seeds N)")
    parser.add_argument("--only", help="comma-separated variant keys to run, e.g. 'quad-length,control' (default: "
                                       "all; the first row, the reference, always runs; --list-variants shows the keys)")
    parser.add_argument("--list-variants", action="store_true", help="print each variant's key and label, and exit")
    parser.add_argument("--out", help="default: out/aero_study, or out/attention_study for --suite attention")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                        help="train nothing: merge these results.json (e.g. one per seed, run in parallel) into --out")
    parser.add_argument("--recost", metavar="RESULTS_JSON",
                        help="train nothing: price the rows of RESULTS_JSON again under this checkout's profiles, into --out")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.merge:
        return merge(args)
    if args.recost:
        return recost(args)

    attention = args.suite == "attention"
    seeds = ([args.seed] if args.seed is not None else
             [int(s) for s in (args.seeds or ("0,1" if attention else "0")).split(",")])
    size = SIZES[args.size]
    spec = "gpt2{" + ",".join(f"{k}={v}" for k, v in {**size, "vocab_size": args.vocab_size,
                                                          "block_size": max(args.seq_len, 128)}.items()) + "}"
    out = Path(args.out or ("out/attention_study" if attention else "out/aero_study"))
    out.mkdir(parents=True, exist_ok=True)
    chosen = attention_variants(args.finetune) if attention else variants(size["n_layer"])
    if args.list_variants:
        print("\n".join(f"{variant.key:24} {variant.label}" for variant in chosen))
        return
    if args.only:
        chosen = select_variants(chosen, args.only, parser.error)
    from aero_compile.fileio import write_json_atomic

    started = time.perf_counter()
    rows = []
    for variant in chosen:
        for seed in seeds:
            print(f"== {variant.label} (seed {seed}): passes '{variant.passes}'"
                  + (f" on the trained {variant.base}, fine-tune {variant.finetune:g} x budget" if variant.base else
                     f", entropy_reg={variant.entropy_reg}"), flush=True)
            new = study_variant(variant, args, spec, out, seed, seeds)
            rows += new
            for row in new:
                failed = f", private run failed: {row['crypten_error']}" if "crypten_error" in row else ""
                print(f"   {row['variant']}: val ppl {row['val_ppl_start']:.1f} -> {row['val_ppl_end']:.2f}, "
                      f"trained in {row['train_seconds']:.0f} s, {(time.perf_counter() - started) / 60:.1f} min so far"
                      f"{failed}", flush=True)
            # Written after every row: a run cut short still leaves its figures.
            write_json_atomic(out / "results.json", {"model": spec, "suite": args.suite, "args": vars(args),
                                                     "seeds": seeds, "git": git_state(),
                                                     "seconds": time.perf_counter() - started, "rows": rows})
    elapsed = time.perf_counter() - started
    text = write_outputs(out, args.suite, rows, {"model": spec, "args": vars(args), "seeds": seeds,
                                                 "git": git_state(), "seconds": elapsed})
    print(text)
    print(f"\nmodel {spec}, {args.tokens:,} tokens per variant, T={args.seq_len}, seeds {seeds}, {elapsed / 60:.1f} min in all")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'cost_vs_ppl.png'} and per-variant entropy pictures")


if __name__ == "__main__":
    main()
