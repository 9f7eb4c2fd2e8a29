"""SPU cheetah's counted messages: a refill-free line per form (norms in log2 of the reduced length) plus the
silent-OT refills' expected share per element; and (slow) the analyzer's count against a real run's."""

from __future__ import annotations

import math
import statistics

import pytest

from aero_compile.cost import analyze, load_profile
from aero_compile.cost.profiles import Profile
from aero_compile.targets.spu.message_fit import ELEMENTWISE_MESSAGES, NORM_MESSAGES, fit_messages


def _norm_size(rows: int, length: int, runs: list[int]) -> dict:
    return {"features": {"calls": 1.0, "length": float(length), "rows": float(rows), "elements": float(rows * length)},
            "runs": runs}


def test_fit_separates_the_refill_free_line_from_the_refills():
    # a norm: 100 + 20 per doubling of the length + 0.01 per element, refills of 1,281 messages
    def line(rows, length):
        return 100 + 20 * math.log2(length) + 0.01 * rows * length

    sizes = [_norm_size(r, n, [round(line(r, n))] * 3) for r, n in ((16, 8), (16, 32), (64, 8), (64, 128), (256, 32))]
    sizes[3]["runs"][1] += 1281  # one run of one size paid a refill
    sizes.append(_norm_size(128, 128, [round(line(128, 128)) + 1281]))  # every run of this size did
    fitted = fit_messages(sizes, NORM_MESSAGES)
    # counts are whole messages: the line comes back within their rounding
    assert fitted["messages"] == pytest.approx({"calls": 100, "log2_length": 20, "elements": 0.01}, rel=0.01, abs=0.002)
    assert fitted["messages_fit"]["sizes_in_line"] == 5  # the all-refilled size is left out of the line
    refills = fitted["messages_refills"]
    assert refills["refills"] == 2 and refills["runs"] == 16
    assert refills["per_element"] == pytest.approx(2 * 1281 / refills["elements"], rel=0.01)


def test_elementwise_forms_keep_refill_free_points():
    sizes = [{"features": {"calls": 1.0, "elements": float(e)}, "runs": runs}
             for e, runs in ((128, [72, 76, 72]), (1024, [84, 1365]), (4096, [173, 173]))]
    fitted = fit_messages(sizes, ELEMENTWISE_MESSAGES)
    assert fitted["messages_points"]["points"] == [[128.0, 72.0], [1024.0, 84.0], [4096.0, 173.0]]
    assert fitted["messages_refills"]["refills"] == 1


def test_the_analyzer_prices_messages_in_log2_length_plus_refills():
    entry = {"rounds": {"calls": 1}, "bytes": {"elements": 1.0},
             "messages": {"calls": 100.0, "log2_length": 20.0, "elements": 0.01},
             "messages_refills": {"per_element": 0.1}}
    profile = Profile("p", {"ops": {"softmax": entry}})
    cost = profile.cost("softmax", {"calls": 1.0, "length": 8.0, "elements": 256.0})
    assert cost.messages == pytest.approx(100 + 60 + 2.56 + 25.6)
    assert cost.bytes == 256.0  # bytes untouched by the message fields


def test_the_shipped_softmax_messages_grow_with_its_row_length():
    profile = load_profile("spu-cheetah")
    entry = profile.ops["softmax"]
    assert "messages_points" not in entry and entry["messages_fit"]["features"] == list(NORM_MESSAGES)
    short = profile.cost("softmax", {"calls": 1.0, "length": 8.0, "elements": 128.0, "rows": 16.0}).messages
    long = profile.cost("softmax", {"calls": 1.0, "length": 64.0, "elements": 128.0, "rows": 2.0}).messages
    assert long - short == pytest.approx(3 * entry["messages"]["log2_length"])
    assert 15 <= entry["messages"]["log2_length"] <= 25  # a comparison tree's level: ~20 messages measured
    assert all("messages_refills" in e for e in profile.ops.values())


HELD_OUT = "gpt2{n_layer=1,n_embd=32,n_head=2,vocab_size=128}"  # a width, depth and T no calibration used
HELD_OUT_T = 16
REPETITIONS = 6


@pytest.mark.spu
@pytest.mark.slow
def test_a_held_out_run_sends_the_messages_the_analyzer_counts(captured, rewritten_all):
    """The simulator's counters (equal to a two-process run's: the same SPU link counter). The refill-free count
    within 10% of the fewest a pass sent (a pass without a refill); the count with the refills' expected share
    within 15% of the mean pass, plus one refill's worth spread over the passes (a pass pays whole refills of
    ~1,300 messages, the count their expected share)."""
    from aero_compile.targets.spu.runner import run_private

    graphs = {"before": captured(HELD_OUT), "after": rewritten_all(HELD_OUT)}
    measured = run_private(graphs, seq_len=HELD_OUT_T, protocol="cheetah", mode="simulator", repetitions=REPETITIONS)
    for name, gm in graphs.items():
        ops = analyze(gm, "spu-cheetah", "loopback", seq_len=HELD_OUT_T).ops
        counted, refills = sum(op.messages for op in ops), sum(op.refill_messages for op in ops)
        runs = measured[name]["timing"]["all_rounds"]
        print(f"{name}: counted {counted - refills:.0f} refill-free + {refills:.0f} refills, passes sent {runs}")
        assert abs((counted - refills) / min(runs) - 1) <= 0.10, (name, counted - refills, runs)
        assert abs(counted - statistics.mean(runs)) <= 0.15 * statistics.mean(runs) + 1300 / len(runs), (name, counted, runs)
