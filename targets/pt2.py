"""The .pt2 backend: re-export the rewritten graph with dynamic batch/sequence and save it atomically."""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.capture import EXAMPLE_BATCH, EXAMPLE_SEQ, example_input, export_program, run_graph
from aero_compile.errors import AeroError, describe
from aero_compile.fileio import atomic_path


def export_graph(gm: fx.GraphModule) -> torch.export.ExportedProgram:
    """The rewritten GraphModule as an ExportedProgram with dynamic batch and sequence dims."""
    example = example_input(gm, seq_len=EXAMPLE_SEQ, batch=EXAMPLE_BATCH)
    try:
        return export_program(gm, example)
    except Exception as exc:
        raise AeroError(f"cannot export the rewritten graph: {describe(exc)}") from None


def save_pt2(gm: fx.GraphModule, path, *, check: bool = True) -> dict:
    """Write ``gm`` as a .pt2 file; with ``check``, load it back and compare its logits."""
    program = export_graph(gm)
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
        if check:
            probe = example_input(gm, seq_len=5, batch=1, seed=1)
            loaded = torch.export.load(str(tmp)).module()
            diff = (run_graph(loaded, probe) - run_graph(gm, probe)).abs().max().item()
            if diff > 1e-4:
                raise AeroError(f"the written .pt2 does not reproduce the graph (max |diff| {diff:.3g}); nothing written")
            return {"format": "pt2", "path": str(path), "max_abs_diff": diff}
    return {"format": "pt2", "path": str(path)}
