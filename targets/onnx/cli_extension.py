"""The ONNX section of ``aero-compile ... -o model.onnx``: the options, the original's op histogram, verification.

    aero-compile gpt2-tiny --passes all --emit onnx -o m.onnx                    # onnxruntime, opset 20
    aero-compile gpt2-tiny --passes all --emit onnx --onnx-opset 17 -o m17.onnx  # older consumers (onnx2torch)
    aero-compile gpt2-tiny --passes all --emit onnx --onnx-for crypten -o c.onnx # crypten.nn.from_onnx

The emitter (``save_onnx``, called by the CLI's ``-o`` with ``emit_options``) exports, checks and
writes the rewritten model. This extension exports the original graph too, in memory, with the same
options, so the report holds the ONNX op histogram before and after the passes, and prints both
verifications.
"""

from __future__ import annotations

from .histogram import histogram_changes

_FLAGS = {"onnx_opset": "--onnx-opset", "onnx_for": "--onnx-for", "onnx_seq_len": "--onnx-seq-len",
          "onnx_batch": "--onnx-batch"}


def add_arguments(parser) -> None:
    """The backend is chosen by ``-o PATH.onnx`` or ``--emit onnx`` (cli.py); these options shape the file."""
    from .export import TARGETS
    from .opset import DEFAULT_OPSET, MIN_OPSET, max_opset

    group = parser.add_argument_group("ONNX output (-o PATH.onnx)")
    group.add_argument("--onnx-opset", type=int, metavar="N",
                       help=f"ONNX opset, {MIN_OPSET} to {max_opset()} (default {DEFAULT_OPSET}; 17 for --onnx-for "
                            "crypten); below 18 the few operators whose signature changed are rewritten")
    group.add_argument("--onnx-for", choices=TARGETS,
                       help="who reads the file: onnxruntime (default: input_ids, any batch and length up to the "
                            "context) or crypten (crypten.nn.from_onnx: one_hot input of fixed shape, public values "
                            "folded into constants, only operators CrypTen has)")
    group.add_argument("--onnx-seq-len", type=int, metavar="T",
                       help="with --onnx-for crypten: the file's fixed sequence length (default: --seq-len, capped "
                            "at the model's context)")
    group.add_argument("--onnx-batch", type=int, metavar="B", help="with --onnx-for crypten: the file's batch (default 1)")


def emit_options(args) -> dict:
    """The emitter's options from the flags, checked before any work (one-line AeroError)."""
    from pathlib import Path

    from aero_compile.errors import AeroError

    from .opset import check_opset

    given = [flag for option, flag in _FLAGS.items() if getattr(args, option, None) is not None]
    if not args.output or Path(args.output).suffix != ".onnx":
        if given:
            raise AeroError(f"{given[0]} shapes an ONNX file: it needs -o PATH.onnx")
        return {}
    target = args.onnx_for or "onnxruntime"
    if args.onnx_opset is not None:
        check_opset(args.onnx_opset)
    if target != "crypten":
        fixed = [flag for flag in ("--onnx-seq-len", "--onnx-batch") if flag in given]
        if fixed:
            raise AeroError(f"{fixed[0]} is for --onnx-for crypten: the onnxruntime file takes any batch and "
                            "sequence up to the model's context")
        return {"opset": args.onnx_opset} if args.onnx_opset is not None else {}
    for flag, value in (("--onnx-seq-len", args.onnx_seq_len), ("--onnx-batch", args.onnx_batch)):
        if value is not None and value < 1:
            raise AeroError(f"{flag} must be a positive integer, got {value}")
    return {"target": "crypten", "opset": args.onnx_opset, "seq_len": args.onnx_seq_len,
            "batch": args.onnx_batch or 1, "default_seq_len": args.seq_len}


def apply(args, result) -> None:
    """After an ONNX emit: add the original graph's export to the report and print the ONNX section."""
    output = result.report.output or {}
    if output.get("format") != "onnx":
        return
    from aero_compile.errors import AeroError

    from . import inspect_onnx

    try:
        original = inspect_onnx(result.before, **getattr(args, "emit_options", {}))
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
    target = output.get("target", "onnxruntime")
    console.print(f"ONNX for {target}: {', '.join(output['files'])} ({output['bytes']:,} bytes, opset {output['opset']}, "
                  f"{data}), onnx.checker {output['checker']}", markup=False, highlight=False)
    console.print(f"  {_signature(output['inputs'])} -> {_signature(output['outputs'])}", markup=False, highlight=False)
    metadata = output.get("metadata") or {}
    if "aero_compile.max_seq_len" in metadata:
        bound = metadata["aero_compile.max_seq_len"]
        console.print(f"  context: sequence <= {bound} (metadata aero_compile.max_seq_len; a longer input fails at "
                      f"node 'sequence_longer_than_context_{bound}')", markup=False, highlight=False)
    crypten = output.get("crypten_import")
    if crypten:
        figures = f", max |diff| vs onnxruntime {crypten['max_abs']:.1e}" if "max_abs" in crypten else ""
        console.print(f"  CrypTen from_onnx: {crypten['status']}{figures} (inputs: {metadata.get('aero_compile.input')})",
                      markup=False, highlight=False)
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
