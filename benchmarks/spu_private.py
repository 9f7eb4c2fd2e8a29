"""Measured MPC cost of a private forward pass, before vs after --passes all, under SPU (cheetah by default).

    PYTHONPATH=. python benchmarks/spu_private.py                     # from the repo root; gpt2-tiny and a 4-layer 128-wide GPT, T=32/64/128
    PYTHONPATH=. python benchmarks/spu_private.py --models gpt2-tiny --seq-lens 32
    PYTHONPATH=. python benchmarks/spu_private.py --depth             # GPT-2 small width, 1-3 layers at T=128
    PYTHONPATH=. python benchmarks/spu_private.py --depth-narrow      # the 128-wide GPT at 1-4 layers, T=128
    PYTHONPATH=. python benchmarks/spu_private.py --report            # the tables, from the recorded rows

Every figure is measured by SPU's simulator (two parties as threads over SPU's in-memory link: the same
protocol and counters as separate processes, see tests/test_spu_parties.py): the model owner's send +
recv bytes and messages, the run's seconds, the logits error. Each (model, T) is appended to ``--rows``
(JSON lines) as soon as it is measured, and skipped when already there, so a long study resumes.
``--report`` prints the tables from the rows, with the analyzer's spu-cheetah prediction priced *now*
(so a recalibrated profile is compared against the same measurements), the depth fit and its
extrapolation to 12 layers beside the AERO paper's rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import warnings
from pathlib import Path

DEFAULT_MODELS = ["gpt2-tiny", "gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=1024}"]
DEFAULT_SEQ_LENS = [32, 64, 128]
DEFAULT_ROWS = Path(__file__).parent / "results" / "spu_private.jsonl"
# GPT-2 small's width (d=768, 12 heads, FFN 3072) at 1-3 layers. The 50,257-row vocabulary does not fit:
# one layer with it ran out of this machine's 24 GB (the one-hot embedding and tied head as HE products),
# so the blocks are measured with a small vocabulary and the embedding + head apart, at growing vocabularies.
DEPTH_LAYERS = (1, 2, 3)
DEPTH_VOCAB = 1024
HEAD_VOCABS = (1024, 4096, 8192)
GPT2_SMALL_VOCAB = 50257
PAPER_REFERENCE = Path(__file__).resolve().parents[1] / "aero_compile" / "cost" / "data" / "reference" / \
    "aero_v2_gpt2_L12_T128.json"


def depth_model(layers: int, vocab: int = DEPTH_VOCAB) -> str:
    return f"gpt2{{n_layer={layers},vocab_size={vocab}}}"


# The default benchmark's 128-wide GPT at 1-4 layers: a depth line cheap enough to check with 4 points
NARROW_LAYERS = (1, 2, 3, 4)


def narrow_model(layers: int) -> str:
    return f"gpt2{{n_layer={layers},n_embd=128,n_head=4,vocab_size=1024}}"


def narrow_report(rows: list[dict], protocol: str = "cheetah", seq_len: int = 128) -> list[str]:
    """Is the measured cost linear in depth? The 128-wide GPT at 1-4 layers."""
    by_model = {r["model"]: r for r in rows if r["protocol"] == protocol and r["seq_len"] == seq_len}
    points = [(n, by_model[narrow_model(n)]) for n in NARROW_LAYERS if narrow_model(n) in by_model]
    if len(points) < 3:
        return [f"narrow depth line: {len(points)} of {len(NARROW_LAYERS)} rows measured; need at least 3"]
    lines = []
    for name in ("before", "after"):
        intercept, slope, worst = linear_fit([n for n, _ in points], [r[name]["bytes"] / 1e6 for _, r in points])
        lines.append(f"narrow ({narrow_model(0).replace('n_layer=0,', '')}, T={seq_len}) {name}: "
                     f"{slope:.2f} MB per layer + {intercept:.2f} MB; worst residual of the line {worst:.2%} "
                     f"over layers {[n for n, _ in points]}")
    return lines


def depth_plan() -> list[str]:
    """The depth study's models: blocks at 1-3 layers, and embedding + head alone at growing vocabularies
    (the deepest last: the likeliest to outgrow the machine)."""
    return [depth_model(n) for n in DEPTH_LAYERS[:-1]] + [depth_model(0, v) for v in HEAD_VOCABS] + \
        [depth_model(DEPTH_LAYERS[-1])]


def read_rows(path: Path) -> list[dict]:
    """The recorded rows; a last line cut short by a crash is skipped (that row is measured again)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for index, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if index != len(lines) - 1:
                raise
    return rows


def append_row(path: Path, row: dict) -> None:
    """One JSON line, appended and synced (a crash can cut only the last line, which read_rows skips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def graphs_of(model: str):
    import aero_compile as ac
    from aero_compile.pass_manager import PassManager

    before = ac.capture(model)
    after = PassManager.from_pipeline("all", verify=False).run(before).graph_module
    return {"before": before, "after": after}


def measure(models: list[str], seq_lens: list[int], protocol: str, rows_path: Path) -> None:
    from aero_compile.targets.spu import config
    from aero_compile.targets.spu.runner import run_private

    done = {(r["model"], r["seq_len"], r["protocol"]) for r in read_rows(rows_path)}
    for model in models:
        todo = [t for t in seq_lens if (model, t, protocol) not in done]
        if not todo:
            continue
        graphs = graphs_of(model)
        for seq_len in todo:
            measured = run_private(graphs, seq_len=seq_len, protocol=protocol)
            row = {"model": model, "seq_len": seq_len, "protocol": protocol,
                   **{name: {k: m[k] for k in ("bytes", "rounds", "seconds", "max_abs_error",
                                                "argmax_agreement_resolvable", "setup", "compile_seconds")}
                      for name, m in measured.items()},
                   "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
                   **config.versions(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
            append_row(rows_path, row)
            print(_line(row, _predicted(graphs, seq_len, protocol)), flush=True)


def _predicted(graphs, seq_len: int, protocol: str) -> dict[str, int] | None:
    from aero_compile.cost import analyze

    if protocol != "cheetah":
        return None
    return {name: analyze(gm, profile="spu-cheetah", seq_len=seq_len, batch=1).bytes for name, gm in graphs.items()}


HEADER = (f"{'model':<44} {'T':>4} | {'MB b/a':>17} {'x':>5} | {'messages b/a':>13} | {'s b/a':>13} | "
          f"{'err b/a':>17} | {'argmax b/a':>11} | analyzer bytes b/a")


def _line(row: dict, predicted: dict[str, int] | None) -> str:
    b, a = row["before"], row["after"]
    analyzer = "n/a" if predicted is None else \
        " / ".join(f"{(predicted[n] - row[n]['bytes']) / row[n]['bytes']:+.1%}" for n in ("before", "after"))
    return (f"{row['model']:<44} {row['seq_len']:>4} | {b['bytes'] / 1e6:>8.2f}/{a['bytes'] / 1e6:<8.2f} "
            f"{b['bytes'] / a['bytes']:>5.2f} | {b['rounds']:>6}/{a['rounds']:<6} | "
            f"{b['seconds']:>6.1f}/{a['seconds']:<6.1f} | {b['max_abs_error']:>8.1e}/{a['max_abs_error']:<8.1e} | "
            f"{b['argmax_agreement_resolvable']:>5.0%}/{a['argmax_agreement_resolvable']:<5.0%} | {analyzer}")


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(intercept, slope, worst relative residual) of ys = intercept + slope * xs, least squares."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
    intercept = mean_y - slope * mean_x
    worst = max(abs(intercept + slope * x - y) / y for x, y in zip(xs, ys))
    return intercept, slope, worst


def depth_report(rows: list[dict], protocol: str = "cheetah", seq_len: int = 128) -> list[str]:
    """Cost linear in depth? and the 12-layer GPT-2 small extrapolation beside the paper's rows."""
    by_model = {r["model"]: r for r in rows if r["protocol"] == protocol and r["seq_len"] == seq_len}
    blocks = [(n, by_model[depth_model(n)]) for n in DEPTH_LAYERS if depth_model(n) in by_model]
    heads = [(v, by_model[depth_model(0, v)]) for v in HEAD_VOCABS if depth_model(0, v) in by_model]
    lines = []
    if len(blocks) < 2:
        return [f"depth study: {len(blocks)} of {len(DEPTH_LAYERS)} block rows measured; need at least 2"]
    paper = {row["config"]: row["comm_gb"] for row in json.loads(PAPER_REFERENCE.read_text())["rows"]}
    for name, paper_config in (("before", "SM+LN+G"), ("after", "SM+ScFuFFN")):
        layers = [n for n, _ in blocks]
        gigabytes = [r[name]["bytes"] / 1e9 for _, r in blocks]
        intercept, per_layer, worst = linear_fit(layers, gigabytes) if len(blocks) > 2 else \
            (gigabytes[0] - (gigabytes[1] - gigabytes[0]) / (layers[1] - layers[0]) * layers[0],
             (gigabytes[1] - gigabytes[0]) / (layers[1] - layers[0]), 0.0)
        lines.append(f"{name}: per layer {per_layer:.3f} GB, intercept {intercept:.3f} GB at vocabulary {DEPTH_VOCAB} "
                     f"(layers {layers}: {', '.join(f'{g:.3f}' for g in gigabytes)} GB; worst residual of the line "
                     f"{worst:.2%}{'' if len(blocks) > 2 else ', two points: linearity not checked'})")
        if len(heads) >= 2:
            vocabs = [v for v, _ in heads]
            head_gb = [r[name]["bytes"] / 1e9 for _, r in heads]
            head_intercept, per_row, head_worst = linear_fit(vocabs, head_gb) if len(heads) > 2 else \
                (head_gb[0] - (head_gb[1] - head_gb[0]) / (vocabs[1] - vocabs[0]) * vocabs[0],
                 (head_gb[1] - head_gb[0]) / (vocabs[1] - vocabs[0]), 0.0)
            head_small = head_intercept + per_row * DEPTH_VOCAB
            head_full = head_intercept + per_row * GPT2_SMALL_VOCAB
            twelve = intercept - head_small + head_full + 12 * per_layer
            lines.append(f"  embedding + head alone: {', '.join(f'V={v}: {g:.3f}' for v, g in zip(vocabs, head_gb))} GB "
                         f"(linear in V, worst residual {head_worst:.2%}); at V={GPT2_SMALL_VOCAB}: {head_full:.3f} GB "
                         f"(extrapolated)")
            lines.append(f"  12 layers, V={GPT2_SMALL_VOCAB} (extrapolated): {twelve:.2f} GB; AERO paper {paper_config}: "
                         f"{paper[paper_config]:.2f} GB (BumbleBee: weights in the clear; here secret-shared)")
        else:
            lines.append(f"  12 layers at vocabulary {DEPTH_VOCAB} (extrapolated): {intercept + 12 * per_layer:.2f} GB; "
                         f"embedding + head at {GPT2_SMALL_VOCAB} not measured")
    return lines


# The paper's attention shape: [128 x 128] scores (one head), its FFN and norm entries at the same count
PER_ELEMENT_ENTRIES = ("softmax", "gelu", "layernorm", "relu", "exp", "reciprocal", "mul", "square")


def per_element_table(rows: int = 128, length: int = 128) -> list[str]:
    """Bytes per element of each nonlinear entry at [rows x length]: measured cheetah vs the fitted bumblebee."""
    from aero_compile.cost.features import ciphertexts
    from aero_compile.cost.profiles import load_profile

    elements = rows * length
    features = {"calls": 1.0, "elements": float(elements), "rows": float(rows), "length": float(length),
                "ciphertexts": float(ciphertexts(elements)), "io_elements": float(2 * elements),
                "operand_elements": float(2 * elements)}
    cheetah, bumblebee = load_profile("spu-cheetah"), load_profile("bumblebee")
    lines = [f"bytes per element at [{rows} x {length}]: entry, spu-cheetah (measured), bumblebee (fitted), ratio"]
    for entry in PER_ELEMENT_ENTRIES:
        measured = cheetah.cost(entry, features).bytes / elements
        fitted = bumblebee.cost(entry, features).bytes / elements
        lines.append(f"  {entry:<11} {measured:>8,.0f} {fitted:>8,.0f}  {measured / fitted:5.2f}x")
    return lines


def analyzer_gpt2_small(seq_len: int = 128) -> list[str]:
    """The analyzer's spu-cheetah price of the whole GPT-2 small, before and after `all`."""
    from aero_compile.cost import analyze

    graphs = graphs_of("gpt2")
    reports = {n: analyze(graphs[n], profile="spu-cheetah", seq_len=seq_len) for n in ("before", "after")}
    lines = [f"analyzer, spu-cheetah, GPT-2 small (12 layers, V={GPT2_SMALL_VOCAB}) at T={seq_len}: "
             + " -> ".join(f"{r.bytes / 1e9:.2f} GB" for r in reports.values())]
    for name, report in reports.items():
        lines.append(f"  {name}: " + ", ".join(f"{kind} {cost.bytes / 1e9:.2f}" for kind, cost in
                                              sorted(report.by_op.items(), key=lambda item: -item[1].bytes)) + " GB")
    return lines


def report(rows_path: Path, protocol: str) -> None:
    rows = [r for r in read_rows(rows_path) if r["protocol"] == protocol]
    if not rows:
        print(f"no {protocol} rows in {rows_path}: measure first")
        return
    print(f"{rows[0]['machine']}; SPU {rows[0]['spu']} {protocol}, simulator; analyzer priced now")
    print(HEADER)
    graphs = {}
    for row in rows:
        graphs.setdefault(row["model"], graphs_of(row["model"]))
        print(_line(row, _predicted(graphs[row["model"]], row["seq_len"], protocol)))
    print()
    for line in [*narrow_report(rows, protocol), *depth_report(rows, protocol), *(analyzer_gpt2_small() if protocol == "cheetah" else []), "",
                 *per_element_table()]:
        print(line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--seq-lens", nargs="+", type=int, default=DEFAULT_SEQ_LENS)
    parser.add_argument("--protocol", default="cheetah", choices=["cheetah", "semi2k", "aby3"])
    parser.add_argument("--rows", type=Path, default=DEFAULT_ROWS, help="JSON-lines file of measured rows (appended)")
    parser.add_argument("--depth", action="store_true", help="the GPT-2-small-width depth study at T=128")
    parser.add_argument("--depth-narrow", action="store_true", help="the 128-wide GPT at 1-4 layers, T=128")
    parser.add_argument("--report", action="store_true", help="print the tables from --rows; measure nothing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.report:
        report(args.rows, args.protocol)
        return 0
    print(HEADER, flush=True)
    if args.depth:
        measure(depth_plan(), [128], args.protocol, args.rows)
    elif args.depth_narrow:
        measure([narrow_model(n) for n in NARROW_LAYERS], [128], args.protocol, args.rows)
    else:
        measure(args.models, args.seq_lens, args.protocol, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
