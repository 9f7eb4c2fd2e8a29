"""Time build + capture + `--passes all` + report for GPT-2 small widths at 12/24/48 layers.

    python benchmarks/core_compile_time.py [--layers 12 24 48] [--seq-len 128]

Prints one row per depth: seconds to build the model (random init), to capture it with torch.export,
to run the pipeline (passes plus the checks between them), and to summarize before/after.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24, 48])
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import aero_compile as ac
    from aero_compile.report import summarize_graph

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'layers':>6} {'params(M)':>9} {'build_s':>8} {'capture_s':>9} {'passes_s':>8} {'report_s':>8} {'nodes':>6}")
    for n_layer in args.layers:
        start = time.perf_counter()
        model = ac.load_model(f"gpt2{{n_layer={n_layer}}}")
        built = time.perf_counter()
        gm = ac.capture(model, name=f"gpt2-L{n_layer}")
        captured = time.perf_counter()
        manager = ac.PassManager.from_pipeline("all", seq_len=args.seq_len)
        result = manager.run(gm)
        ran = time.perf_counter()
        summarize_graph(result.graph_module, args.seq_len)  # the report's share, timed alone
        reported = time.perf_counter()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{n_layer:>6} {params:>9.1f} {built - start:>8.2f} {captured - built:>9.2f} "
              f"{ran - captured:>8.2f} {reported - ran:>8.2f} {len(gm.graph.nodes):>6}")


if __name__ == "__main__":
    main()
