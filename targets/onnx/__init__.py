"""The ONNX backend: ``aero-compile MODEL --passes all --emit onnx -o model.onnx``, or ``save_onnx(gm, path)``.

Every export is verified before the file appears: ``onnx.checker`` (full check, with shape inference),
then onnxruntime against the PyTorch graph at two input shapes, a mismatch beyond tolerance being an
error. The model takes ``input_ids`` [batch, sequence] (int64, both axes dynamic, the sequence bounded
by the model's context: ``context.py``) and returns ``logits`` [batch, sequence, vocab]; entropy-hooks
outputs are stripped. Weights beyond the exporter's threshold (1.5 GB, under protobuf's 2 GB limit)
go to ``<name>.onnx.data`` beside the model. ``opset`` picks the opset (``opset.py``: 13 to 23);
``target="crypten"`` writes the file CrypTen's ``from_onnx`` reads instead (``targets/crypten/onnx_import``).

    from aero_compile.targets.onnx import save_onnx
    info = save_onnx(result.graph_module, "model.onnx", original=result.before)
    info["onnxruntime"], info["op_histogram"], info["original"]["op_histogram"]
    save_onnx(gm, "m17.onnx", opset=17)
    save_onnx(gm, "private.onnx", target="crypten", seq_len=32)   # input one_hot [1, 32, vocab]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.fx as fx

from aero_compile.errors import AeroError

from .export import AXIS_NAMES, INPUT_NAME, OUTPUT_NAME, TARGETS, OnnxExport, export_onnx
from .histogram import histogram_changes, op_histogram
from .staging import staged_model_path
from .verify import ATOL, CHECK_SHAPES, RTOL, check_file, compare_with_torch

__all__ = ["AXIS_NAMES", "INPUT_NAME", "OUTPUT_NAME", "TARGETS", "OnnxExport", "export_for", "export_onnx",
           "histogram_changes", "inspect_onnx", "op_histogram", "save_onnx", "write_onnx"]


def save_onnx(gm: fx.GraphModule, path, *, original: fx.GraphModule | None = None, external_data: bool | None = None,
              shapes=CHECK_SHAPES, **target) -> dict:
    """Export ``gm`` to ``path`` and verify it; with ``original``, also export that one for the "before" histogram.

    ``external_data``: None puts weights in a separate file only when they are too large for one
    protobuf; True always does. ``target``: what ``export_for`` takes (opset, target, seq_len, batch).
    Raises a one-line AeroError (and writes nothing) on any failure.
    """
    info = write_onnx(export_for(gm, **target), path, external_data=external_data, shapes=shapes)
    if original is not None:
        info["original"] = inspect_onnx(original, shapes=shapes, **target)
    return info


def export_for(gm: fx.GraphModule, *, target: str = "onnxruntime", opset: int | None = None,
               seq_len: int | None = None, batch: int = 1, default_seq_len: int | None = None) -> OnnxExport:
    """The export ``target`` reads (see TARGETS), in memory.

    ``seq_len``/``batch``/``default_seq_len`` are the fixed input shape of a CrypTen file (its
    sequence: ``seq_len``, else ``default_seq_len`` or 128 capped at the context); the onnxruntime
    file takes any batch and any sequence up to the context, so giving them there is an error.
    """
    if target == "crypten":
        from aero_compile.targets.crypten.onnx_import import DEFAULT_SEQ_LEN, export_for_crypten

        return export_for_crypten(gm, seq_len=seq_len, batch=batch, opset=opset,
                                  default_seq_len=default_seq_len or DEFAULT_SEQ_LEN)
    if target != "onnxruntime":
        raise AeroError(f"unknown ONNX target '{target}': use one of {', '.join(TARGETS)}")
    if seq_len is not None or batch != 1:
        raise AeroError("the onnxruntime file takes any batch and sequence (up to the context); a fixed "
                        "--onnx-seq-len/--onnx-batch is for --onnx-for crypten")
    return export_onnx(gm, opset=opset)


def write_onnx(exported: OnnxExport, path, *, external_data: bool | None = None, shapes=CHECK_SHAPES) -> dict:
    """Save an exported program to ``path`` (atomically, model and data), verified; returns the report entry."""
    with staged_model_path(path) as staged:
        exported.program.save(str(staged), external_data=external_data)
        info = verify_saved(exported, staged, shapes)
        info["files"] = [str(Path(path).parent / p.name) for p in sorted(staged.parent.iterdir())]
    return {"format": "onnx", "path": str(path), **info}


def inspect_onnx(gm: fx.GraphModule, *, shapes=CHECK_SHAPES, **target) -> dict:
    """Export and verify ``gm`` without keeping a file: its op histogram and onnxruntime errors."""
    exported = export_for(gm, **target)
    with tempfile.TemporaryDirectory(prefix="aero-onnx-") as directory:
        staged = Path(directory) / "model.onnx"
        exported.program.save(str(staged))
        return verify_saved(exported, staged, shapes)


def verify_saved(exported: OnnxExport, path: Path, shapes=CHECK_SHAPES) -> dict:
    """Checker, onnxruntime comparison, op histogram, and the reader's own checks (CrypTen files: its import)."""
    import onnx

    check_file(path)
    shapes = exported.check_shapes or shapes
    errors = compare_with_torch(exported.graph_module, path, shapes, feeds=exported.feeds)
    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    info = {
        "target": exported.target,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": {v.name: _dims(v) for v in model.graph.input},
        "outputs": {v.name: _dims(v) for v in model.graph.output},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "external_data": external,
        "bytes": sum(p.stat().st_size for p in path.parent.iterdir()),
        "stripped_outputs": exported.stripped_outputs,
        "checker": "passed",
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "onnxruntime": errors,
        "op_histogram": op_histogram(model),
    }
    for key, check in exported.extra_checks.items():  # the reader's own import (CrypTen's from_onnx)
        info[key] = check(exported, path, shapes[0])
    return info


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
