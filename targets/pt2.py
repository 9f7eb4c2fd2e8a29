"""The .pt2 backend: re-export the rewritten graph with dynamic batch/sequence and save it atomically.

What is written must load in a fresh interpreter with only torch installed: a graph that calls an op
outside torch's own namespaces (a custom op a library registers when imported, such as transformers'
``grouped_mm_fallback``) is refused in one line naming the op, and nothing is written. The context
length, where known, is recorded in the program's range constraints, so the file states it itself.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from aero_compile.capturing import EXAMPLE_BATCH, EXAMPLE_SEQ, example_input, export_program, run_graph
from aero_compile.errors import AeroError, describe
from aero_compile.fileio import atomic_path
from aero_compile.graph_info import graph_info
from aero_compile.ops import module_stack

# Op namespaces every torch installation registers by itself (torch.ops.<namespace>).
TORCH_NAMESPACES = frozenset({"aten", "prims", "higher_order", "_operator", "operator", "math", "builtins"})


def foreign_ops(graph: fx.Graph) -> list[tuple[str, fx.Node]]:
    """(qualified op name, node) for every call of an op that a fresh ``import torch`` does not know."""
    found = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        namespace = getattr(node.target, "namespace", None)
        if isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) and namespace not in TORCH_NAMESPACES:
            found.append((node.target.name() if hasattr(node.target, "name") else str(node.target), node))
    return found


def check_standard_ops(graph: fx.Graph, what: str = "the rewritten graph") -> None:
    """Refuse, in one line, a graph a fresh interpreter with only torch could not load."""
    found = foreign_ops(graph)
    if not found:
        return
    name, node = found[0]
    stack = module_stack(node)
    where = f" in {stack[-1][2]} ('{stack[-1][1]}')" if stack else ""
    others = sorted({n for n, _ in found} - {name})
    more = f" (and {', '.join(others)})" if others else ""
    raise AeroError(f"cannot write a .pt2: {what} calls the custom op '{name}'{where}{more}, which a fresh "
                    f"interpreter with only torch cannot load; nothing written")


def export_graph(gm: fx.GraphModule) -> torch.export.ExportedProgram:
    """The rewritten GraphModule as an ExportedProgram with dynamic batch and sequence dims."""
    check_standard_ops(gm.graph)
    example = example_input(gm, seq_len=EXAMPLE_SEQ, batch=EXAMPLE_BATCH)
    try:
        program = export_program(gm, example, max_seq_len=graph_info(gm).max_seq_len)
    except Exception as exc:
        raise AeroError(f"cannot export the rewritten graph: {describe(exc)}") from None
    check_standard_ops(program.graph, "its export")
    return program


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
