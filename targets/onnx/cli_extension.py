"""The ONNX section of ``aero-compile ... -o model.onnx``: the original's op histogram, verification figures.

The emitter (``save_onnx``, called by the CLI's ``-o``) already exported, checked and wrote the
rewritten model. This extension exports the original graph too, in memory, so the report holds the
ONNX op histogram before and after the passes, and prints both verifications.
"""

from __future__ import annotations

from .histogram import histogram_changes


def add_arguments(parser) -> None:
    """Nothing to add: the backend is chosen by ``-o PATH.onnx`` or ``--emit onnx`` (cli.py)."""


def apply(args, result) -> None:
    """After an ONNX emit: add the original graph's export to the report and print the ONNX section."""
    output = result.report.output or {}
    if output.get("format") != "onnx":
        return
    from aero_compile.errors import AeroError

    from . import inspect_onnx

    try:
        original = inspect_onnx(result.before)
    except AeroError as exc:  # the rewritten model is written and verified; only the comparison is lost
        original = {"error": str(exc)}
    result.report.output = output = {**output, "original": original}
    print_onnx_section(output)


def print_onnx_section(output: dict, console=None) -> None:
    """Files, verification per shape, and the op types whose count the passes changed."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    data = "weights in external data" if output["external_data"] else "weights inline"
    console.print(f"ONNX: {', '.join(output['files'])} ({output['bytes']:,} bytes, opset {output['opset']}, {data}), "
                  f"onnx.checker {output['checker']}", markup=False, highlight=False)
    console.print(f"  {_signature(output['inputs'])} -> {_signature(output['outputs'])}", markup=False, highlight=False)
    if output.get("stripped_outputs"):
        console.print(f"  stripped {output['stripped_outputs']} training-only output(s) (entropy hooks)")
    original = output.get("original") or {}
    if "error" in original:
        console.print(f"  original graph: no before histogram ({original['error']})", markup=False, highlight=False)
    for label, entry in (("rewritten", output), ("original", original)):
        if "onnxruntime" in entry:
            figures = "; ".join(f"[{r['shape'][0]}, {r['shape'][1]}] max |diff| {r['max_abs']:.1e} (rel {r['max_rel']:.1e})"
                                for r in entry["onnxruntime"])
            console.print(f"  onnxruntime vs PyTorch, {label}: {figures}", markup=False, highlight=False)
    before = original.get("op_histogram")
    if before is None:
        return
    after = output["op_histogram"]
    changes = histogram_changes(before, after)
    if changes:
        table = Table(title="ONNX op types changed by the passes")
        for column in ("op", "before", "after"):
            table.add_column(column, justify="left" if column == "op" else "right")
        for op, count_before, count_after in changes:
            table.add_row(op, str(count_before), str(count_after))
        console.print(table)
    else:
        console.print("  ONNX op types: the passes changed none")
    unchanged = [f"{op} {count}" for op, count in after.items() if before.get(op) == count]
    if unchanged:
        console.print(f"  unchanged: {', '.join(unchanged)}")


def _signature(values: dict) -> str:
    return ", ".join(f"{name} [{', '.join(str(d) for d in dims)}]" for name, dims in values.items())
