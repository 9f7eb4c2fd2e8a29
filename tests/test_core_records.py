"""Typed records: the graph's metadata through copies, the report's JSON, the shared per-op cost record."""

import pytest

import aero_compile as ac
from aero_compile.capturing import clone_graph_module, deep_copy_graph_module
from aero_compile.graph_info import graph_info, set_graph_info
from aero_compile.records import OpCost, to_json


def test_graph_info_is_filled_by_capture_and_survives_copies(captured):
    gm = captured("gpt2-tiny")
    info = graph_info(gm)
    assert (info.model, info.vocab_size, info.max_seq_len) == ("gpt2-tiny", 256, 256)
    for copy in (clone_graph_module(gm), deep_copy_graph_module(gm)):
        assert graph_info(copy) == info
        set_graph_info(copy, temperature="head")  # a copy's record is replaced, never shared and edited
        assert graph_info(copy).temperature == "head" and graph_info(gm).temperature == "none"


def test_pass_outputs_are_recorded_on_the_result_only(captured):
    gm = captured("gpt2-tiny")
    hooked = ac.PassManager.from_pipeline("entropy-hooks{temperature=head}").run(gm).graph_module
    assert [o.layer for o in graph_info(hooked).entropy_outputs] == [0, 1]
    assert graph_info(hooked).temperature == "head"
    assert graph_info(gm).entropy_outputs == () and graph_info(gm).temperature == "none"


def test_context_check_names_the_option():
    info = graph_info(ac.capture("gpt2-tiny"))
    info.check_seq_len(info.max_seq_len, "--seq-len")
    with pytest.raises(ac.AeroError, match=r"^--seq-len 257 exceeds the model's context of 256: use less$"):
        info.check_seq_len(257, "--seq-len", "use less")


def test_report_json_leaves_out_unset_sections_and_keeps_pass_fields(captured):
    report = ac.PassManager.from_pipeline("remove-layernorm").run(captured("gpt2-tiny")).report
    data = report.to_json()
    assert list(data) == ["model", "seq_len", "pipeline", "passes", "before", "after"]
    assert list(data["passes"][0]) == ["name", "options", "changed", "preserves_computation", "max_abs_diff",
                                       "rel_diff", "seconds"]
    assert list(data["before"]) == ["op_counts", "op_elements"]


def test_one_cost_record_for_prediction_and_measurement():
    predicted = OpCost(latency_s=0.0, elements=0)
    predicted.add(OpCost(rounds=3, bytes=10.6, latency_s=0.5, count=1, elements=4))
    measured = OpCost(seconds=0.0)
    measured.add(OpCost(rounds=3, bytes=11, seconds=0.25, count=1))
    assert to_json(predicted) == {"rounds": 3, "bytes": 11, "latency_s": 0.5, "count": 1, "elements": 4}
    assert to_json(measured) == {"rounds": 3, "bytes": 11, "seconds": 0.25, "count": 1}
