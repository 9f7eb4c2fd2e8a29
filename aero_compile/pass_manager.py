"""The pass manager: a registry of named passes, pipelines written as text, checks between passes.

After every pass: ``graph.lint()``, a forward run, and either a numerical check against the graph
before it (passes that preserve the computation) or a record of the output drift (passes that change
the architecture). The module given to ``run`` is never modified.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx

from .capture import clone_graph_module, deep_copy_graph_module, example_input, remove_dead_code
from .errors import AeroError, PassError
from .pipeline_text import format_item, parse_pipeline


@dataclass
class PassResult:
    """What one pass returns: the new graph module and how many rewrites it made."""

    graph_module: fx.GraphModule
    changed: int
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PassInfo:
    name: str
    run: Callable[..., PassResult]  # run(gm, **options): clones gm first, never mutates it
    preserves_computation: bool
    summary: str
    runs_after: tuple[str, ...] = ()  # when both are in a pipeline, this pass runs after these
    options: tuple[str, ...] = ()


PASSES: dict[str, PassInfo] = {}

# Named pipelines. In "all" every FFN activation becomes identity, so the result is Softmax-only.
PIPELINES: dict[str, str] = {
    "all": "canonicalize,remove-layernorm,gelu-to-identity{relu=true,silu=true},scale-ffn,fold-linear",
    "none": "",
}


def register_pass(name: str, *, preserves_computation: bool, summary: str, runs_after: tuple[str, ...] = (),
                  options: tuple[str, ...] = ()):
    """Decorator: register ``fn(gm, **options) -> PassResult``; the registered callable clones ``gm`` first."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(gm: fx.GraphModule, **kwargs) -> PassResult:
            unknown = sorted(set(kwargs) - set(options))
            if unknown:
                known = ", ".join(options) or "none"
                raise AeroError(f"pass '{name}' has no option(s) {unknown}: its options are {known}")
            result = fn(clone_graph_module(gm), **kwargs)
            remove_dead_code(result.graph_module)
            return result

        PASSES[name] = PassInfo(name, run, preserves_computation, summary, tuple(runs_after), tuple(options))
        return run

    return decorate


def _load_builtin_passes() -> None:
    from . import passes  # noqa: F401  (registers every pass in passes/)


def known_pass_names() -> list[str]:
    _load_builtin_passes()
    return sorted(PASSES) + sorted(PIPELINES)


def expand_pipeline(text: str) -> list[tuple[str, dict]]:
    """Pipeline text to (pass name, options), named pipelines expanded."""
    _load_builtin_passes()
    items: list[tuple[str, dict]] = []
    for name, options in parse_pipeline(text):
        if name in PIPELINES:
            if options:
                raise AeroError(f"pipeline '{name}' takes no options; give options to its passes instead")
            items.extend(expand_pipeline(PIPELINES[name]))
        elif name in PASSES:
            items.append((name, options))
        else:
            raise AeroError(f"unknown pass '{name}': known passes are {', '.join(known_pass_names())}")
    return items


def order_by_constraints(items: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Stable topological order: a pass moves after the passes it must follow, nothing else moves."""
    remaining = list(items)
    ordered: list[tuple[str, dict]] = []
    while remaining:
        present = {name for name, _ in remaining}
        for index, (name, options) in enumerate(remaining):
            if not present & set(PASSES[name].runs_after) - {name}:
                ordered.append(remaining.pop(index))
                break
        else:
            cycle = ", ".join(name for name, _ in remaining)
            raise AeroError(f"pass ordering constraints form a cycle among: {cycle}")
    return ordered


@dataclass
class PipelineResult:
    graph_module: fx.GraphModule
    report: dict
    before: fx.GraphModule


class _NamedInterpreter(fx.Interpreter):
    """Runs a graph and, on failure, says which node failed."""

    def run_node(self, node):
        try:
            return super().run_node(node)
        except Exception as exc:
            exc.aero_node = node.name
            raise


def forward(gm: fx.GraphModule, inputs: torch.Tensor, pass_name: str) -> torch.Tensor:
    """The graph's logits; on failure, a PassError naming the node that failed."""
    try:
        with torch.no_grad():
            out = gm(inputs)  # the generated code is fast; the interpreter only re-runs to find the node
    except Exception:
        out = _run_naming_node(gm, inputs, pass_name)
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _run_naming_node(gm: fx.GraphModule, inputs: torch.Tensor, pass_name: str):
    try:
        with torch.no_grad():
            return _NamedInterpreter(gm).run(inputs)
    except Exception as exc:
        raise PassError(pass_name, f"the rewritten graph does not run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        node=getattr(exc, "aero_node", None)) from None


class PassManager:
    """Run passes in order with checks between them.

    ``PassManager(["remove-layernorm", ("prune-ffn", {"last": 6})])`` or
    ``PassManager.from_pipeline("all")``; ``run(gm)`` returns a ``PipelineResult``.
    """

    def __init__(self, passes: list, *, verify: bool = True, seq_len: int = 128, check_seq_len: int = 16,
                 rtol: float = 1e-4, atol: float = 1e-5, pipeline_text: str | None = None):
        _load_builtin_passes()
        items = []
        for entry in passes:
            if isinstance(entry, str):
                items.extend(expand_pipeline(entry))
            elif isinstance(entry, tuple):
                name, options = entry
                items.extend((n, {**o, **options}) for n, o in expand_pipeline(name))
            else:
                raise AeroError(f"a pass is named by a string or (name, options), not {type(entry).__name__}")
        self.items = order_by_constraints(items)
        self.reordered = [n for n, _ in self.items] != [n for n, _ in items]
        self.verify = verify
        self.seq_len = seq_len
        self.check_seq_len = check_seq_len
        self.rtol, self.atol = rtol, atol
        self.pipeline_text = pipeline_text if pipeline_text is not None else ",".join(format_item(n, o) for n, o in self.items)

    @classmethod
    def from_pipeline(cls, text: str, **kwargs) -> "PassManager":
        return cls([text] if text.strip() else [], pipeline_text=text, **kwargs)

    def run(self, gm: fx.GraphModule) -> PipelineResult:
        from .report import summarize_graph

        max_len = gm.meta.get("aero_max_seq_len")
        if max_len and self.seq_len > max_len:
            raise AeroError(f"the analysed sequence length {self.seq_len} exceeds the model's context of {max_len}: "
                            "use a smaller --seq-len")
        original = gm
        current = deep_copy_graph_module(gm)  # the caller's module and tensors stay untouched
        check_len = min(self.check_seq_len, int(gm.meta.get("aero_max_seq_len") or self.check_seq_len))
        inputs = example_input(gm, seq_len=check_len, batch=2)
        reference = forward(current, inputs, "<input>") if self.verify else None
        pass_reports = []
        for name, options in self.items:
            info = PASSES[name]
            started = time.perf_counter()
            try:
                result = info.run(current, **options)
            except AeroError:
                raise
            except Exception as exc:
                raise PassError(name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
            new_gm = result.graph_module
            try:
                new_gm.graph.lint()
            except Exception as exc:
                raise PassError(name, f"the graph is malformed after the pass: {exc}") from None
            entry = {"name": name, "options": options, "changed": result.changed,
                     "preserves_computation": info.preserves_computation}
            if self.verify:
                output = forward(new_gm, inputs, name)
                diff = (output.float() - reference.float()).abs().max().item() if output.shape == reference.shape else float("inf")
                scale = reference.float().abs().max().item()
                entry["max_abs_diff"] = diff
                entry["rel_diff"] = diff / scale if scale else diff
                if info.preserves_computation and not diff <= self.atol + self.rtol * scale:
                    raise PassError(name, f"it should preserve the computation but changed the logits by {diff:.3g} "
                                          f"(tolerance {self.atol + self.rtol * scale:.3g})")
                reference = output
            entry["seconds"] = round(time.perf_counter() - started, 4)
            if result.notes:
                entry["notes"] = result.notes
            pass_reports.append(entry)
            current = new_gm
        report = {
            "model": gm.meta.get("aero_model", "model"),
            "seq_len": self.seq_len,
            "pipeline": self.pipeline_text,
            "passes": pass_reports,
            "before": summarize_graph(original, self.seq_len),
            "after": summarize_graph(current, self.seq_len),
        }
        if self.reordered:
            report["reordered"] = [n for n, _ in self.items]
        return PipelineResult(graph_module=current, report=report, before=original)
