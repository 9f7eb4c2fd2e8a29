"""What every engine reports about a private run's logits, against the plaintext run of the same graph."""

from __future__ import annotations

import torch


def logits_error(private: torch.Tensor, plain: torch.Tensor) -> dict:
    """Max abs error and the fraction of positions whose argmax (next token) agrees.

    ``argmax_agreement_resolvable`` leaves out near-ties: positions whose plaintext top-2 margin is
    below twice the max abs error, where no computation at that precision can be expected to agree
    (random-init tiny models have margins of 1e-4); ``resolvable_positions`` says how many it judges.
    """
    private, plain = torch.as_tensor(private).float(), plain.float()
    agree = private.argmax(-1) == plain.argmax(-1)
    error = (private - plain).abs().max().item()
    top2 = plain.topk(2, dim=-1).values
    resolvable = (top2[..., 0] - top2[..., 1]) > 2 * error
    resolvable_agreement = agree[resolvable].float().mean().item() if resolvable.any() else 1.0
    return {"max_abs_error": error, "argmax_agreement": agree.float().mean().item(),
            "argmax_agreement_resolvable": resolvable_agreement,
            "resolvable_positions": int(resolvable.sum().item()),
            "near_tie_positions": int((~resolvable).sum().item())}


def before_after(before, after, fmt="{:,}") -> str:
    """A measured table's cell: "1,024 -> 512" (both engines' tables print pairs this way)."""
    return f"{fmt.format(before)} -> {fmt.format(after)}"


def measured_table(measured: dict, *, title: str, columns: tuple[str, str, str, str], order_by: str,
                   skip_silent: bool = False, predicted_label: str = "analyzer predicts"):
    """The measured table every engine prints: per op rounds/bytes/seconds before -> after, totals, saving,
    and the analyzer's prediction where both stages have one.

    ``columns``: the engine's names for op, rounds, bytes, seconds; ``order_by``: the figure ops are
    sorted by (largest before first); ``skip_silent``: leave out ops without communication. Where the
    prediction has a latency (``predicted.latency_s``), a "predicted s" column sits beside the measured
    seconds: per op where the prediction attributes time to the same op names (``by_op[op].latency_s``),
    and in total.
    """
    from rich.table import Table

    from aero_compile.records import format_ratio

    before, after = measured["before"], measured["after"]
    pb, pa = before.get("predicted"), after.get("predicted")
    timed = bool(pb and pa and pb.get("latency_s") is not None and pa.get("latency_s") is not None)
    per_op_times = timed and "by_op" in pb and "by_op" in pa
    table = Table(title=title)
    for column in (*columns, *(("predicted s",) if timed else ())):
        table.add_column(column, justify="left" if column == columns[0] else "right")
    ops = sorted(set(before["by_op"]) | set(after["by_op"]), key=lambda k: -before["by_op"].get(k, {}).get(order_by, 0))
    for op in ops:
        b, a = before["by_op"].get(op, {}), after["by_op"].get(op, {})
        timed_local = per_op_times and (op in pb["by_op"] or op in pa["by_op"])  # predicted compute to set beside
        if skip_silent and not (b.get("rounds") or a.get("rounds") or b.get("bytes") or a.get("bytes") or timed_local):
            continue  # local ops: no communication
        predicted = ()
        if timed:
            predicted = (before_after(pb["by_op"].get(op, {}).get("latency_s", 0.0),
                                      pa["by_op"].get(op, {}).get("latency_s", 0.0), "{:.3f}") if per_op_times else "",)
        table.add_row(op, before_after(b.get("rounds", 0), a.get("rounds", 0)),
                      before_after(b.get("bytes", 0), a.get("bytes", 0)),
                      before_after(b.get("seconds", 0.0), a.get("seconds", 0.0), "{:.3f}"), *predicted)
    table.add_row("total", before_after(before["rounds"], after["rounds"]), before_after(before["bytes"], after["bytes"]),
                  before_after(before["seconds"], after["seconds"], "{:.3f}"),
                  *((before_after(pb["latency_s"], pa["latency_s"], "{:.3f}"),) if timed else ()), style="bold")
    table.add_row("saving", format_ratio(before["rounds"], after["rounds"]),
                  format_ratio(before["bytes"], after["bytes"]), format_ratio(before["seconds"], after["seconds"]),
                  *((format_ratio(pb["latency_s"], pa["latency_s"]),) if timed else ()))
    if pb and pa:
        table.add_row(predicted_label.format(**pb), before_after(pb["rounds"], pa["rounds"]),
                      before_after(pb["bytes"], pa["bytes"]),
                      before_after(pb["latency_s"], pa["latency_s"], "{:.3f}") if timed else "",
                      *(("",) if timed else ()))
    return table
