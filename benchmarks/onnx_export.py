"""Time the ONNX backend on one model, original and rewritten: export, write+verify, size, onnxruntime speed.

    python benchmarks/onnx_export.py gpt2 --passes all --seq-len 128

Prints one line per graph: seconds to export (torch.export + torch.onnx dynamo), seconds to write and
verify (checker + onnxruntime at two shapes), file size, node count, the verification errors, and
the median onnxruntime latency of one forward pass at [1, seq-len] on this machine's CPU.
"""

from __future__ import annotations

import argparse
import warnings
import statistics
import tempfile
import time
from pathlib import Path

import aero_compile as ac
from aero_compile.capturing import example_input


def _ort_latency_ms(path: Path, gm, seq_len: int, repeats: int) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": example_input(gm, seq_len=seq_len, batch=1).numpy()}
    session.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> None:
    from aero_compile.targets.onnx import export_onnx, write_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="gpt2")
    parser.add_argument("--passes", default="all")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch pytree deprecations on graph copies

    result = ac.PassManager.from_pipeline(args.passes).run(ac.capture(args.model))
    with tempfile.TemporaryDirectory(prefix="aero-onnx-bench-") as directory:
        for label, gm in (("original", result.before), (f"--passes {args.passes}", result.graph_module)):
            started = time.perf_counter()
            exported = export_onnx(gm)
            exported_s = time.perf_counter() - started
            path = Path(directory) / f"{label.replace(' ', '_')}.onnx"
            info = write_onnx(exported, path)
            written_s = time.perf_counter() - started - exported_s
            errors = ", ".join(f"{e['shape']} abs {e['max_abs']:.1e} rel {e['max_rel']:.1e}" for e in info["onnxruntime"])
            latency = _ort_latency_ms(path, exported.graph_module, args.seq_len, args.repeats)
            print(f"{args.model} {label}: export {exported_s:.1f} s, write+verify {written_s:.1f} s, "
                  f"{info['bytes'] / 1e6:.1f} MB, {sum(info['op_histogram'].values())} nodes; {errors}; "
                  f"onnxruntime [1, {args.seq_len}] {latency:.1f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()
