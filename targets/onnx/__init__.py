"""The ONNX backend: ``aero-compile MODEL --passes all --emit onnx -o model.onnx``, or ``save_onnx(gm, path)``.

Every export is verified before the file appears: ``onnx.checker`` (full check, with shape inference),
then onnxruntime against the PyTorch graph at two input shapes, a mismatch beyond tolerance being an
error. The model takes ``input_ids`` [batch, sequence] (int64, both axes dynamic) and returns
``logits`` [batch, sequence, vocab]; entropy-hooks outputs are stripped. Weights beyond the
exporter's threshold (1.5 GB, under protobuf's 2 GB limit) go to ``<name>.onnx.data`` beside the model.

    from aero_compile.targets.onnx import save_onnx
    info = save_onnx(result.graph_module, "model.onnx", original=result.before)
    info["onnxruntime"], info["op_histogram"], info["original"]["op_histogram"]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.fx as fx

from .export import AXIS_NAMES, INPUT_NAME, OUTPUT_NAME, OnnxExport, export_onnx
from .histogram import histogram_changes, op_histogram
from .staging import staged_model_path
from .verify import ATOL, CHECK_SHAPES, RTOL, check_file, compare_with_torch

__all__ = ["AXIS_NAMES", "INPUT_NAME", "OUTPUT_NAME", "OnnxExport", "export_onnx", "histogram_changes",
           "inspect_onnx", "op_histogram", "save_onnx", "write_onnx"]


def save_onnx(gm: fx.GraphModule, path, *, original: fx.GraphModule | None = None, external_data: bool | None = None,
              shapes=CHECK_SHAPES) -> dict:
    """Export ``gm`` to ``path`` and verify it; with ``original``, also export that one for the "before" histogram.

    ``external_data``: None puts weights in a separate file only when they are too large for one
    protobuf; True always does. Raises a one-line AeroError (and writes nothing) on any failure.
    """
    info = write_onnx(export_onnx(gm), path, external_data=external_data, shapes=shapes)
    if original is not None:
        info["original"] = inspect_onnx(original, shapes=shapes)
    return info


def write_onnx(exported: OnnxExport, path, *, external_data: bool | None = None, shapes=CHECK_SHAPES) -> dict:
    """Save an exported program to ``path`` (atomically, model and data), verified; returns the report entry."""
    with staged_model_path(path) as staged:
        exported.program.save(str(staged), external_data=external_data)
        info = verify_saved(exported, staged, shapes)
        info["files"] = [str(Path(path).parent / p.name) for p in sorted(staged.parent.iterdir())]
    return {"format": "onnx", "path": str(path), **info}


def inspect_onnx(gm: fx.GraphModule, *, shapes=CHECK_SHAPES) -> dict:
    """Export and verify ``gm`` without keeping a file: its op histogram and onnxruntime errors."""
    exported = export_onnx(gm)
    with tempfile.TemporaryDirectory(prefix="aero-onnx-") as directory:
        staged = Path(directory) / "model.onnx"
        exported.program.save(str(staged))
        return verify_saved(exported, staged, shapes)


def verify_saved(exported: OnnxExport, path: Path, shapes=CHECK_SHAPES) -> dict:
    """Checker, onnxruntime comparison and op histogram of a saved model."""
    import onnx

    check_file(path)
    errors = compare_with_torch(exported.graph_module, path, shapes)
    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": {v.name: _dims(v) for v in model.graph.input},
        "outputs": {v.name: _dims(v) for v in model.graph.output},
        "external_data": external,
        "bytes": sum(p.stat().st_size for p in path.parent.iterdir()),
        "stripped_outputs": exported.stripped_outputs,
        "checker": "passed",
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "onnxruntime": errors,
        "op_histogram": op_histogram(model),
    }


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
