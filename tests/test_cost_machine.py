"""A profile's compute seconds are the calibration machine's: the report says so on another kind of machine."""

from __future__ import annotations

from aero_compile.cost import analyze
from aero_compile.cost.machine import compute_mismatch, compute_timed_on, cpu_model, usable_cores
from aero_compile.cost.profiles import load_profile
from aero_compile.cost.report import print_cost_table


def test_each_timed_profile_names_its_cpu_and_the_papers_does_not():
    assert compute_timed_on(load_profile("crypten").data)["cpu"]
    assert compute_timed_on(load_profile("spu-cheetah").data)["cpu"]
    assert compute_timed_on(load_profile("bumblebee").data) is None  # the paper's figures: no CPU of ours


def test_a_mismatch_is_named_only_on_another_cpu_or_core_count():
    here = {"source": {"compute": {"cpu": cpu_model(), "cores": usable_cores()}}}
    assert compute_mismatch(compute_timed_on(here)) is None and compute_mismatch(None) is None
    other_cpu = {"latency": {"compute_source": {"cpu": "Some Other CPU 9000", "cores": usable_cores()}}}
    assert "timed on Some Other CPU 9000" in compute_mismatch(compute_timed_on(other_cpu))
    more_cores = {"source": {"compute": {"cpu": cpu_model(), "cores": usable_cores() + 62}}}
    assert f"({usable_cores() + 62} cores)" in compute_mismatch(compute_timed_on(more_cores))


def test_the_cost_table_says_whose_latency_it_is(captured, monkeypatch):
    from rich.console import Console

    import aero_compile.cost.machine as machine

    gm = captured("gpt2-tiny")
    report = analyze(gm, "crypten", seq_len=8)
    assert report.to_dict()["compute_timed_on"] == compute_timed_on(load_profile("crypten").data)
    monkeypatch.setattr(machine, "cpu_model", lambda: "Some Other CPU 9000")
    elsewhere = analyze(gm, "crypten", seq_len=8)
    console = Console(width=200, record=True)
    print_cost_table(elsewhere, elsewhere, console=console)
    text = console.export_text()
    assert "this machine is Some Other CPU 9000" in text and "aero-compile calibrate crypten --compute" in text
