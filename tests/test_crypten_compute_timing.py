"""CrypTen's compute term: forms timed between parties started as a private run starts them, per provider."""

from __future__ import annotations

import copy
import json

import pytest

from aero_compile.cost import load_profile
from aero_compile.targets.crypten.calibrate import measure
from aero_compile.targets.crypten.compute_timing import PROVIDERS, calibrate_compute
from aero_compile.targets.crypten.link_timing import measure_like_a_run

pytestmark = pytest.mark.crypten

CASES = [("softmax", 4, 8, 0), ("local", 4, 8, 0)]


def test_run_like_timing_runs_the_program_the_counting_calibration_measures():
    # same lowering, same counters: only the process set-up (threads, links, the dealer) differs
    counted = {(r["form"], r["rows"]): (r["rounds"], r["bytes"]) for r in measure(CASES)}
    for provider in PROVIDERS:
        timed = measure_like_a_run(CASES, repetitions=3, provider=provider)
        assert {(r["form"], r["rows"]): (r["rounds"], r["bytes"]) for r in timed} == counted, provider
        assert all(len(r["all_seconds"]) == 3 and r["seconds"] > 0 for r in timed)
    assert counted[("local", 4)] == (0, 0)  # local on the shares: compute only


@pytest.mark.slow
def test_calibrate_compute_writes_each_providers_seconds_and_says_how(monkeypatch):
    from aero_compile.targets.crypten import compute_timing

    monkeypatch.setattr(compute_timing, "SIZES", ((4, 32, 0), (8, 64, 0)))  # two sizes: the path, not the figures
    profile = copy.deepcopy(load_profile("crypten").data)
    del profile["ops"]["local/view"]  # a compute-only entry is created by its timing
    out = calibrate_compute(profile, "aero-compile calibrate crypten --compute --forms local/view", repetitions=3,
                            forms=["local/view"])
    entry = out["ops"]["local/view"]
    assert entry["seconds"]["calls"] > 0 and entry["seconds_fit"]["features"] == ["calls"]
    assert set(entry["seconds_by_provider"]) == set(PROVIDERS[1:])
    assert entry["seconds_by_provider"]["ttp"]["seconds"]["calls"] > 0
    source = out["source"]["compute"]
    assert source["forms"] == ["local/view"] and "started as --run-private starts them" in source["how"]
    assert source["providers"] == {"seconds": "tfp", "seconds_by_provider": ["ttp"]}
    timed = [r for r in out["timing_measurements"] if r["form"] == "local/view"]
    assert {r["provider"] for r in timed} == set(PROVIDERS)
    json.dumps(out)  # the profile stays JSON


def test_provenance_keeps_only_earlier_runs_that_still_time_some_form():
    from aero_compile.targets.crypten.compute_timing import still_in_force

    runs = [{"forms": ["a", "b"]}, {"forms": ["c"]}, {"forms": ["b"]}, {"how": "unlisted"}]
    # "b" was re-timed by the third run, "c" now: the first run still times "a"; the second is gone
    assert still_in_force(runs, ["c"]) == [{"forms": ["a", "b"]}, {"forms": ["b"]}, {"how": "unlisted"}]
    assert still_in_force(runs, ["a", "b", "c"]) == [{"how": "unlisted"}]
