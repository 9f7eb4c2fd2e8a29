"""The pass manager: pipelines written as text over the registry of named passes, checks between passes.

The registry (``PassResult``, ``Phase``, ``register_pass``, ``PASSES``) is ``pass_registry``: passes import
it, and this module imports them all; its names stay importable from here.

After every pass: ``graph.lint()``, a forward run, and either a numerical check against the graph
before it (passes that preserve the computation) or a record of the output drift (passes that change
the architecture). The module given to ``run`` is never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.fx as fx

from . import passes  # noqa: F401  (importing the package registers every pass in passes/)
from .blocks import model_layers
from .capturing import deep_copy_graph_module, example_input
from .errors import AeroError, PassError, describe
from .graph_info import graph_info
from .pass_options import check_options
from .pass_registry import PASSES, PassInfo, PassResult, Phase, register_pass
from .report import PassRecord, PipelineReport, remaining_nonlinearities, summarize_graph
from .pipeline_text import format_item, parse_pipeline

__all__ = ["PASSES", "PIPELINES", "PassInfo", "PassManager", "PassResult", "Phase", "PipelineResult", "check_pipeline",
           "expand_pipeline", "known_pass_names", "model_limits", "order_by_phase", "register_pass"]


# Named pipelines. In "all" every FFN activation becomes identity, so the result is Softmax-only.
PIPELINES: dict[str, str] = {
    "all": "canonicalize,remove-layernorm,gelu-to-identity{relu=true,silu=true},scale-ffn,fold-linear",
    "none": "",
}


def model_limits(gm: fx.GraphModule) -> dict[str, tuple[float, str]]:
    """The bounds options may name in ``Option.limit``, as this model sets them."""
    layers = model_layers(gm)
    return {"layers": (layers, f"the model has {layers} layer{'s' if layers != 1 else ''}")}


def check_pipeline(items: list[tuple[str, dict]], text: str = "") -> list[tuple[str, dict]]:
    """Options checked and converted; a pass that is not idempotent named twice is refused."""
    checked = [(name, check_options(name, PASSES[name].schema, options)) for name, options in items]
    names = [name for name, _ in checked]
    for name in dict.fromkeys(names):
        if PASSES[name].once and names.count(name) > 1:
            shown = f" ('{text}')" if text else ""
            raise AeroError(f"pass '{name}' appears {names.count(name)} times in the pipeline{shown}, but it may run "
                            f"only once: {PASSES[name].once}")
    return checked


def known_pass_names() -> list[str]:
    return sorted(PASSES) + sorted(PIPELINES)


def expand_pipeline(text: str) -> list[tuple[str, dict]]:
    """Pipeline text to (pass name, options), named pipelines expanded."""
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


def order_by_phase(items: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Stable sort by phase: passes of one phase keep the order they were written in."""
    return sorted(items, key=lambda item: PASSES[item[0]].phase)


@dataclass
class PipelineResult:
    graph_module: fx.GraphModule
    report: PipelineReport
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
        raise PassError(pass_name, f"the rewritten graph does not run: {describe(exc)}",
                        node=getattr(exc, "aero_node", None)) from None


class PassManager:
    """Run passes in order with checks between them.

    ``PassManager(["remove-layernorm", ("prune-ffn", {"last": 6})])`` or
    ``PassManager.from_pipeline("all")``; ``run(gm)`` returns a ``PipelineResult``.
    """

    def __init__(self, passes: list, *, verify: bool = True, seq_len: int = 128, check_seq_len: int = 16,
                 rtol: float = 1e-4, atol: float = 1e-5, pipeline_text: str | None = None,
                 calibration: dict | None = None):
        """``calibration``: defaults for the passes that calibrate on data (``calibrate`` sequences,
        ``tokens`` random|corpus), applied where the pipeline text gives no value of its own."""
        items = []
        for entry in passes:
            if isinstance(entry, str):
                items.extend(expand_pipeline(entry))
            elif isinstance(entry, tuple):
                name, options = entry
                items.extend((n, {**o, **options}) for n, o in expand_pipeline(name))
            else:
                raise AeroError(f"a pass is named by a string or (name, options), not {type(entry).__name__}")
        if calibration:
            items = [(name, {**{k: v for k, v in calibration.items() if k in PASSES[name].options and v is not None},
                             **options}) for name, options in items]
        self.items = order_by_phase(check_pipeline(items, pipeline_text or ""))
        self.reordered = [n for n, _ in self.items] != [n for n, _ in items]
        self.verify = verify
        self.seq_len = seq_len
        self.check_seq_len = check_seq_len
        self.rtol, self.atol = rtol, atol
        self.pipeline_text = pipeline_text if pipeline_text is not None else ",".join(format_item(n, o) for n, o in self.items)

    @classmethod
    def from_pipeline(cls, text: str, **kwargs) -> "PassManager":
        return cls([text] if text.strip() else [], pipeline_text=text, **kwargs)

    def check_against(self, gm: fx.GraphModule) -> None:
        """Options whose range the model sets (e.g. prune-ffn's ``last`` <= its layers), before any pass runs."""
        limited = [(name, options) for name, options in self.items
                   if any(spec is not None and spec.limit and key in options
                          for key, spec in PASSES[name].schema.items())]
        if limited:
            limits = model_limits(gm)
            for name, options in limited:
                check_options(name, PASSES[name].schema, options, limits)

    def run(self, gm: fx.GraphModule) -> PipelineResult:
        graph_info(gm).check_seq_len(self.seq_len, "the analysed sequence length", "use a smaller --seq-len")
        self.check_against(gm)
        original = gm
        current = deep_copy_graph_module(gm)  # the caller's module and tensors stay untouched
        check_len = min(self.check_seq_len, graph_info(gm).max_seq_len or self.check_seq_len)
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
                raise PassError(name, describe(exc)) from exc
            new_gm = result.graph_module
            try:
                new_gm.graph.lint()
            except Exception as exc:
                raise PassError(name, f"the graph is malformed after the pass: {exc}") from None
            entry = PassRecord(name=name, options=options, changed=result.changed,
                               preserves_computation=info.preserves_computation, notes=result.notes or None)
            if self.verify:
                output = forward(new_gm, inputs, name)
                diff = (output.float() - reference.float()).abs().max().item() if output.shape == reference.shape else float("inf")
                scale = reference.float().abs().max().item()
                entry.max_abs_diff = diff
                entry.rel_diff = diff / scale if scale else diff
                if info.preserves_computation and not diff <= self.atol + self.rtol * scale:
                    raise PassError(name, f"it should preserve the computation but changed the logits by {diff:.3g} "
                                          f"(tolerance {self.atol + self.rtol * scale:.3g})")
                reference = output
            entry.seconds = round(time.perf_counter() - started, 4)
            pass_reports.append(entry)
            current = new_gm
        after = summarize_graph(current, self.seq_len)
        after.remaining_nonlinear = remaining_nonlinearities(current, self.seq_len)
        report = PipelineReport(
            model=graph_info(gm).model or "model", seq_len=self.seq_len, pipeline=self.pipeline_text,
            passes=pass_reports, before=summarize_graph(original, self.seq_len), after=after,
            reordered=[n for n, _ in self.items] if self.reordered else None)
        return PipelineResult(graph_module=current, report=report, before=original)
