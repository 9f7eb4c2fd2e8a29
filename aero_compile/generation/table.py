"""The generation cost table: prefill, per token (first, last, mean), total, and re-running per token."""

from __future__ import annotations

from .pricing import GenerationCost, StepCost, Totals


def _cell(rounds: float, nbytes: float, latency: float) -> str:
    return f"{rounds:>9.0f} {nbytes / 1e6:>12.2f} {latency:>9.3f}"


def _rows(cost: GenerationCost) -> list[tuple[str, str]]:
    rows = [(f"prefill ({cost.prompt_tokens} tokens)", _cell(cost.prefill.rounds, cost.prefill.bytes, cost.prefill.latency_s))]
    steps = cost.decode
    if steps:
        first, last = steps[0], steps[-1]
        n = len(steps)
        rows += [
            (f"decode first (context {first.context})", _cell(first.rounds, first.bytes, first.latency_s)),
            (f"decode last (context {last.context})", _cell(last.rounds, last.bytes, last.latency_s)),
            (f"decode mean ({n} steps)", _cell(sum(s.rounds for s in steps) / n, sum(s.bytes for s in steps) / n,
                                               sum(s.latency_s for s in steps) / n)),
        ]
    else:
        rows.append(("decode", "      (one new token: prefill only)"))
    rows.append((f"total ({cost.new_tokens} new tokens)", _cell(cost.total.rounds, cost.total.bytes, cost.total.latency_s)))
    rows.append(("re-run sequence per token", _cell(cost.rerun.rounds, cost.rerun.bytes, cost.rerun.latency_s)))
    rerun_steps: list[StepCost] = getattr(cost, "rerun_steps", [])
    if steps and len(rerun_steps) > 1:
        ratio = rerun_steps[1].bytes / max(steps[0].bytes, 1)
        rows.append((f"re-run / decode bytes (context {steps[0].context})", f"{ratio:>30.1f}x"))
    return rows


def print_generation_table(before: GenerationCost, after: GenerationCost, profile: str, checks: dict) -> None:
    """Print both sides; ``checks``: side -> RerunCheck of the derived programs (empty with --no-verify)."""
    header = f"{'rounds':>9} {'MB':>12} {'latency s':>9}"
    print(f"\ngeneration cost ({profile}): prompt {before.prompt_tokens} tokens, {before.new_tokens} new tokens")
    print(f"{'':38s} {'before':^32s}   {'after':^32s}")
    print(f"{'':38s} {header}   {header}")
    for (label, left), (_, right) in zip(_rows(before), _rows(after)):
        print(f"{label:38s} {left:32s}   {right}")
    for side, check in checks.items():
        print(f"  {side}: prefill + decode steps match re-running the sequence "
              f"(max |logits diff| {check.max_abs_diff:.2g} over {len(check.tokens)} greedy tokens)")


def print_private_steps(decode: list[dict], indent: str = "    ") -> None:
    """The measured per-step table of a private generation (``decode``: the prefill first), no tokens in it."""
    for entry in decode:
        print(f"{indent}context {entry['context']:>5}: {entry['rounds']:>6} rounds {entry['bytes'] / 1e6:>10.3f} MB "
              f"{entry['seconds']:>8.2f} s")


def record_party_side(measured: dict, side: str, *, decode: list[dict], role: str, prompt_tokens: int,
                      new_tokens: int, security: dict, engine_fields: dict, tokens=None, sampling=None) -> dict:
    """``measured[side]["generation"]`` of one party of a generation between hosts (the client's with its
    ``tokens`` and ``sampling``), its ``security`` block; prints the party's per-step table. Returns the section."""
    section = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "decode": decode, **engine_fields,
               "role": role,
               # the client holds no weights and the owner no prompt: no party can decode in plaintext
               "plaintext_tokens": None, "near_ties": None}
    if tokens is not None:
        section["tokens"] = tokens
        section["sampling"] = sampling.record()
    measured.setdefault(side, {})["generation"] = section
    measured[side]["security"] = security
    print(f"  {side}: per step (the prefill first), as the {role} measured it")
    print_private_steps(decode)
    return section


__all__ = ["print_generation_table", "print_private_steps", "record_party_side", "Totals"]
