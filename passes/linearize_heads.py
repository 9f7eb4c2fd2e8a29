"""linearize-heads: attention heads that a calibration batch shows to be near-uniform or a fixed
shift become linear maps of their values, with no nonlinear op left.

The AERO paper's lens (entropic overload and collapse) used to delete work instead of regularizing it.
On ``calibrate`` sequences, per head h of every attention softmax:

* ``gap`` = mean over rows of log(n_i) - H_i, where H_i is row i's entropy (as the entropy hooks
  measure it) and n_i the number of keys query i sees: 0 for exactly uniform attention. A head with
  ``gap <= uniform_tol`` (nats) is replaced by the causal running mean of its values,
  ``out_i = (1 / n_i) sum_{j <= i} v_j``.
* ``mass(k)`` = mean over rows of a[i, max(i - k, 0)]: the weight on the key k positions back
  (k = 0: itself; rows i < k attend to position 0). A head with ``mass(k) >= offset_mass`` for some
  k <= ``max_offset`` is replaced by that shift of its values, ``out_i = v_max(i-k, 0)``.

Both replacements are ``pattern @ values`` with a public [T, T] pattern built from the shape: a
product with a public matrix, free under MPC. Heads that stay keep their softmax, on a slice of the
scores holding only them; a layer with no head left loses its softmax and its Q.K product entirely.

Reports per head: entropy, gap, best offset and its mass, decision, and the logits drift of replacing
that head alone on the first ``DRIFT_SEQUENCES`` calibration sequences (max |delta logits|); the pass
manager reports the total.
``dry_run=true`` reports and changes nothing. Options: ``uniform_tol`` (default 0.05 nats),
``offset_mass`` (default 0.9), ``max_offset`` (default 2), ``calibrate`` (sequences, default 8),
``tokens`` (random | corpus), ``calib_len`` (default 64). Changes the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from aero_compile.blocks import AttentionSite, attention_sites
from aero_compile.calibration import SOURCES as CALIBRATION_SOURCES, attention_statistics, calibration_tokens
from aero_compile.errors import AeroError
from aero_compile.graph_info import graph_info
from aero_compile.ops import MASK_VALUE
from aero_compile.pass_registry import PassResult, Phase, register_pass
from aero_compile.pass_options import MAX_CALIBRATION_LENGTH, MAX_CALIBRATION_SEQUENCES, Option

from ._rewrite import add_buffer, copy_meta
from .entropy_hooks import row_entropy

aten = torch.ops.aten
MEAN = -1  # the code of a running-mean head; a shift by k is coded k >= 0
DRIFT_SEQUENCES = 2  # calibration sequences the per-head drift is measured on


@dataclass
class HeadDecision:
    layer: int
    head: int
    entropy: float
    gap: float
    offset: int
    offset_mass: float
    code: int | None  # None: keeps its softmax; MEAN; or the shift k
    drift: float | None = None

    @property
    def label(self) -> str:
        if self.code is None:
            return "softmax"
        return "running mean" if self.code == MEAN else f"shift {self.code}"


def _decide(site: AttentionSite, index: int, probabilities: torch.Tensor, uniform_tol: float,
            offset_mass: float, max_offset: int) -> list[HeadDecision]:
    queries, keys = probabilities.shape[-2:]
    rows = torch.arange(queries)
    lengths = (rows + 1 + keys - queries).clamp(min=1).float()
    entropy = row_entropy(probabilities)  # [batch, heads, queries]
    gap = (torch.log(lengths) - entropy).mean(dim=(0, 2))
    decisions = []
    for head in range(probabilities.shape[1]):
        masses = [probabilities[:, head, rows, (rows - k).clamp(min=0)].mean().item() for k in range(max_offset + 1)]
        best = max(range(len(masses)), key=masses.__getitem__)
        code = MEAN if gap[head] <= uniform_tol else (best if masses[best] >= offset_mass else None)
        decisions.append(HeadDecision(site.layer if site.layer is not None else index, head,
                                      entropy[:, head].mean().item(), gap[head].item(), best, masses[best], code))
    return decisions


def _linear_patterns(gm: fx.GraphModule, site: AttentionSite, codes: list[int], insert: list) -> fx.Node:
    """Public [1, L, T, T]: per linearized head, the running-mean or shift pattern over T positions."""
    graph, values = gm.graph, site.values

    def call(target, *args):
        node = graph.call_function(target, tuple(args))
        insert.append(node)
        return node

    code_name = add_buffer(gm, f"linear_head_codes_layer{site.layer}", torch.tensor(codes, dtype=torch.float32).reshape(-1, 1, 1))
    length = call(aten.sym_size.int, values, 2)
    ones = call(aten.new_ones.default, values, [length, length])
    visible = call(aten.tril.default, ones)
    counts = call(aten.sum.dim_IntList, visible, [-1], True)  # [T, 1]: i + 1
    mean_pattern = call(aten.mul.Tensor, visible, call(aten.reciprocal.default, counts))
    row = call(aten.sub.Tensor, counts, 1.0)  # i
    column = call(aten.sub.Tensor, call(aten.cumsum.default, ones, 1), 1.0)  # j
    codes_node = graph.get_attr(code_name)
    insert.append(codes_node)
    target = call(aten.clamp_min.default, call(aten.sub.Tensor, row, codes_node), 0.0)  # [L, T, 1]
    shift_pattern = call(aten.mul.Tensor, call(aten.eq.Tensor, column, target), 1.0)
    is_mean = call(aten.lt.Scalar, codes_node, 0.0)
    pattern = call(aten.where.self, is_mean, mean_pattern, shift_pattern)
    return call(aten.unsqueeze.default, pattern, 0)


def _rewrite_site(gm: fx.GraphModule, site: AttentionSite, codes: list[int | None]) -> bool:
    """Replace the heads whose code is not None; the others keep a softmax over their scores only."""
    linear = [head for head, code in enumerate(codes) if code is not None]
    if not linear or site.mix is None or site.values is None:
        return False
    kept = [head for head, code in enumerate(codes) if code is None]
    graph, inserted = gm.graph, []

    def call(target, *args):
        node = graph.call_function(target, tuple(args))
        inserted.append(node)
        return node

    def index(stem: str, heads: list[int]) -> fx.Node:
        node = graph.get_attr(add_buffer(gm, f"{stem}_layer{site.layer}", torch.tensor(heads, dtype=torch.long)))
        inserted.append(node)
        return node

    with graph.inserting_before(site.mix):
        patterns = _linear_patterns(gm, site, [codes[head] for head in linear], inserted)
        linear_values = call(aten.index_select.default, site.values, 1, index("linear_heads", linear))
        output = call(aten.matmul.default, patterns, linear_values)
        if kept:
            kept_index = index("softmax_heads", kept)
            scores = call(aten.index_select.default, site.scores, 1, kept_index)
            probabilities = call(aten.softmax.int, scores, -1)
            kept_values = call(aten.index_select.default, site.values, 1, kept_index)
            mixed = call(aten.matmul.default, probabilities, kept_values)
            order = kept + linear
            inverse = sorted(range(len(order)), key=order.__getitem__)
            output = call(aten.index_select.default, call(aten.cat.default, [mixed, output], 1), 1,
                          index("head_order", inverse))
    copy_meta(site.softmax.output, *inserted)
    site.mix.replace_all_uses_with(output)
    return True


def _linear_head(values: torch.Tensor, code: int) -> torch.Tensor:
    """Eager twin of the graph's pattern @ values for one head: values [batch, T, head_dim]."""
    length = values.shape[1]
    positions = torch.arange(length, device=values.device)
    if code == MEAN:
        return values.cumsum(1) / (positions + 1).to(values.dtype)[None, :, None]
    return values[:, (positions - code).clamp(min=0)]


class _DriftProbe:
    """Logits drift of replacing one head, by re-running only the graph after that head's attention.

    One full forward records every value; a probe resumes from the attention output with one head
    swapped (``fx.Interpreter``'s ``initial_env``), so GPT-2 small's 144 heads cost 144 partial
    forwards, not 144 rewrites of the graph.
    """

    def __init__(self, gm: fx.GraphModule, tokens: torch.Tensor):
        tokens = tokens[:DRIFT_SEQUENCES]  # the LM head dominates a probe: measure on a few sequences
        self.gm, self.tokens = gm, tokens
        recorder = fx.Interpreter(gm, garbage_collect_values=False)
        with torch.no_grad():
            self.reference = _first(recorder.run(tokens)).float()
        self.env = recorder.env
        self.order = {node: index for index, node in enumerate(gm.graph.nodes)}

    def drift(self, site: AttentionSite, head: int, code: int) -> float:
        cut = self.order[site.mix]
        env = {node: value for node, value in self.env.items() if self.order[node] < cut}
        mixed = self.env[site.mix].clone()
        mixed[:, head] = _linear_head(self.env[site.values][:, head], code)
        env[site.mix] = mixed
        with torch.no_grad():
            logits = _first(fx.Interpreter(self.gm).run(self.tokens, initial_env=env)).float()
        return (logits - self.reference).abs().max().item()


def _first(output):
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def _number(name: str, value, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise AeroError(f"linearize-heads: {name} must be a number, not '{value}'") from None


@register_pass("linearize-heads", preserves_computation=False, phase=Phase.ATTENTION_HEADS,
               # uniform_tol is a gap in nats below the uniform entropy log(n): past 1 nat a head spreads its
               # weight over fewer than ~1/e of the keys it sees, which is no longer "near-uniform".
               options={"uniform_tol": Option(float, min=0, max=1, unit="nats"),
                        "offset_mass": Option(float, min=0, max=1, min_open=True),
                        "max_offset": Option(int, min=0, max=MAX_CALIBRATION_LENGTH),
                        "calibrate": Option(int, min=1, max=MAX_CALIBRATION_SEQUENCES),
                        "tokens": Option(str, choices=CALIBRATION_SOURCES, what="calibration source"),
                        "calib_len": Option(int, min=1, max=MAX_CALIBRATION_LENGTH), "dry_run": bool},
               once="a second run would decide again on the heads the first one kept, in a graph it changed",
               summary="entropy-guided: near-uniform heads -> running mean of values, fixed-offset heads -> "
                       "shifted values (no nonlinear op); dry_run=true only reports")
def linearize_heads(gm, uniform_tol: float = 0.05, offset_mass: float = 0.9, max_offset: int = 2,
                    calibrate: int = 8, tokens: str = "random", calib_len: int = 64,
                    dry_run: bool = False) -> PassResult:
    uniform_tol, offset_mass = _number("uniform_tol", uniform_tol), _number("offset_mass", offset_mass)
    max_offset = _number("max_offset", max_offset, int)
    sites = attention_sites(gm)
    if not sites:
        return PassResult(gm, 0, ["no attention softmax: nothing to linearize"])
    length = min(_number("calib_len", calib_len, int), graph_info(gm).max_seq_len or 10**9)
    ids = calibration_tokens(gm, _number("calibrate", calibrate, int), length, tokens)
    probe = _DriftProbe(gm, ids)
    per_site = [_decide(site, i, probabilities, uniform_tol, offset_mass, max_offset)
                for i, (site, _, probabilities) in enumerate(attention_statistics(gm, ids))]
    for site, decisions in zip(sites, per_site):
        if site.mix is None or site.values is None:  # nothing to rewrite: say so instead of deciding
            for decision in decisions:
                decision.code = None
    unreadable = [site.softmax.name for site in sites if site.mix is None or site.values is None]
    notes = [f"attention softmax(es) {', '.join(unreadable)}: no probabilities @ values product found "
             "after them (run canonicalize first), left as they are"] if unreadable else []
    notes += [f"calibrated on {ids.shape[0]} {tokens} sequence(s) of {ids.shape[1]} tokens; "
             f"uniform if log(n_i) - H_i <= {uniform_tol:g} nats, shift if mass >= {offset_mass:g} (k <= {max_offset})"]
    for site, decisions in zip(sites, per_site):
        for decision in decisions:
            if decision.code is not None and site.mix is not None and site.values is not None:
                decision.drift = probe.drift(site, decision.head, decision.code)
            notes.append(f"layer {decision.layer} head {decision.head}: entropy {decision.entropy:.3f}, "
                         f"gap {decision.gap:.3f}, shift {decision.offset} mass {decision.offset_mass:.2f} -> "
                         f"{decision.label}" + (f", drift {decision.drift:.3g}" if decision.drift is not None else ""))
    chosen = sum(d.code is not None for decisions in per_site for d in decisions)
    if chosen == 0:
        notes.append("no head qualifies: nothing changed")
        return PassResult(gm, 0, notes)
    if dry_run:
        notes.append(f"dry run: {chosen} head(s) would be linearized, nothing changed")
        return PassResult(gm, 0, notes)
    changed = 0
    for site, decisions in zip(sites, per_site):
        if _rewrite_site(gm, site, [d.code for d in decisions]):
            changed += sum(d.code is not None for d in decisions)
    notes.append(f"{changed} head(s) linearized")
    return PassResult(gm, changed, notes)
