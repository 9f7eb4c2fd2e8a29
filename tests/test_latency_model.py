"""The latency model: network term per the protocol's message pattern, compute term from calibration, provenance."""

import math

import pytest

from aero_compile.cost import analyze, load_profile, resolve_network
from aero_compile.cost.latency import LatencyModel, latency_prediction, run_network
from aero_compile.cost.profiles import Network, Profile
from aero_compile.errors import AeroError
from aero_compile.targets.private.calibration import fit_linear, fit_seconds, median_seconds
from aero_compile.targets.spu.session import timed_profiles


@pytest.fixture(scope="module")
def tiny(captured, rewritten_all):
    return captured("gpt2-tiny"), rewritten_all("gpt2-tiny")


def _with_latency(name, **section):
    profile = load_profile(name)
    return Profile(profile.name, {**profile.data, "latency": {**profile.data.get("latency", {}), **section}}, profile.path)


def test_loopback_prices_compute_only(tiny):
    before, _ = tiny
    for name in ("crypten", "spu-cheetah"):
        report = analyze(before, name, "loopback", seq_len=16)
        assert report.compute_s > 0, name  # both shipped profiles carry measured seconds
        assert math.isclose(report.latency_s, report.compute_s + LatencyModel.of(load_profile(name)).delays(
            sum(r.messages for r in report.ops)) * LatencyModel.of(load_profile(name)).loopback_s_per_message,
            rel_tol=1e-9)


def test_network_term_is_delays_times_one_way_plus_one_direction_of_bytes(tiny):
    before, _ = tiny
    profile = _with_latency("crypten", one_way_delays_per_round=3.0)
    net = resolve_network("wan")
    report = analyze(before, profile, net, seq_len=16)
    one_way_bytes = report.bytes * profile.wire_bytes_per_counted_byte
    expected = report.rounds * 3.0 * 0.040 + one_way_bytes * 8 / 100e6 + report.compute_s
    assert math.isclose(report.latency_s, expected, rel_tol=1e-9)
    # rounds and bytes do not depend on the latency model
    plain = analyze(before, "crypten", net, seq_len=16)
    assert (plain.rounds, plain.bytes) == (report.rounds, report.bytes)


def test_ttp_rounds_wait_for_the_dealer_round_trip_or_the_exchange_whichever_is_longer(tiny):
    # measured (docs/latency.md): the owner's request to the dealer and the client's message of a round are in
    # flight at once, so a round costs max(exchange delays, 2 x dealer round trips), not their sum
    before, _ = tiny
    profile = _with_latency("crypten", one_way_delays_per_round=1.0, dealer={"round_trips_per_round": 1.0})
    tfp = analyze(before, profile, "wan", seq_len=16)
    ttp = analyze(before, profile, "wan", seq_len=16, provider="ttp")
    network = lambda report: report.latency_s - report.compute_s  # compute is timed per provider (below)
    assert math.isclose(network(ttp) - network(tfp), tfp.rounds * (2.0 - 1.0) * 0.040, rel_tol=1e-9)
    hidden = _with_latency("crypten", one_way_delays_per_round=1.0, dealer={"round_trips_per_round": 0.25})
    assert math.isclose(network(analyze(before, hidden, "wan", seq_len=16, provider="ttp")),
                        network(analyze(before, hidden, "wan", seq_len=16)), rel_tol=1e-9)


def test_ttp_compute_is_the_seconds_timed_under_ttp(tiny):
    # `calibrate crypten --compute` times every form under each provider: a ttp party also waits for the dealer
    before, _ = tiny
    profile = load_profile("crypten")
    assert profile.data["compute_provider"] == "tfp"
    ttp_profile = profile.for_provider("ttp")
    for name in ("softmax", "gelu", "layernorm", "matmul", "local"):
        assert ttp_profile.ops[name]["seconds"] == profile.ops[name]["seconds_by_provider"]["ttp"]["seconds"]
        assert ttp_profile.ops[name]["seconds"] != profile.ops[name]["seconds"]
    assert profile.for_provider("tfp") is profile and profile.for_provider(None) is profile
    tfp = analyze(before, "crypten", "loopback", seq_len=16)
    ttp = analyze(before, "crypten", "loopback", seq_len=16, provider="ttp")
    assert ttp.compute_s > tfp.compute_s  # measured: the dealer's turnaround is in every ttp round
    expected = sum(ttp_profile.cost(step.entry, step.features).seconds for record in ttp.ops for step in record.steps)
    assert math.isclose(ttp.compute_s - ttp.by_op["local"].latency_s, expected, rel_tol=1e-9)


def test_local_ops_on_shares_cost_compute_and_nothing_else(tiny):
    # CrypTen runs every op on shares in Python: adds, scalings and views took a third of a folded graph's time
    _, after = tiny
    report = analyze(after, "crypten", "loopback", seq_len=16)
    local = report.by_op["local"]
    assert local.rounds == 0 and local.bytes == 0 and local.count > 0 and local.latency_s > 0
    assert math.isclose(report.compute_s, sum(r.compute_s for r in report.ops) + local.latency_s, rel_tol=1e-9)
    assert "local" not in analyze(after, "bumblebee", "loopback", seq_len=16).by_op  # a profile that does not time them


def test_shipped_profiles_state_measured_delays_with_provenance():
    for name, key in (("crypten", "one_way_delays_per_round"), ("spu-cheetah", "one_way_delays_per_round")):
        section = load_profile(name).data["latency"]
        measured = section["measured"]
        assert measured["kind"] == "measured" and measured["command"].startswith("python benchmarks/link_delays.py")
        for field in ("date", "cpu", "cores", "load_average_1min", "fits"):
            assert field in measured, (name, field)
        assert section[key] > 0
    assert load_profile("crypten").data["latency"]["dealer"]["round_trips_per_round"] > 0


def test_spu_counts_messages_with_refills_not_rounds(tiny):
    before, _ = tiny
    report = analyze(before, "spu-cheetah", "wan", seq_len=16)
    messages = sum(r.messages for r in report.ops)
    assert messages > report.rounds  # silent-OT refills: the mean messages per call exceed the refill-free median
    model = LatencyModel.of(load_profile("spu-cheetah"))
    assert model.counts == "messages"
    network = report.latency_s - report.compute_s
    refills = sum(r.refill_messages for r in report.ops)  # a refill's messages go out in bulk: fewer delays
    assert math.isclose(network, model.delays(messages, refills) * (0.040 + model.loopback_s_per_message)
                        + report.bytes * 0.5 * 8 / 100e6, rel_tol=1e-9)


def test_loopback_preset_has_no_link_and_users_cannot_give_infinite_bandwidth():
    loopback = resolve_network("loopback")
    assert loopback.transfer_s(1e12) == 0 and loopback.one_way_s == 0
    with pytest.raises(AeroError):
        resolve_network("lan", bandwidth_mbps=float("inf"))


def test_prediction_record_names_the_network(tiny):
    before, _ = tiny
    assert run_network(None) == "loopback" and run_network({"emulated": False}) == "loopback"
    emulated = run_network({"bandwidth_mbps": 100, "rtt_ms": 80, "emulated": True})
    assert isinstance(emulated, Network) and emulated.rtt_ms == 80
    record = latency_prediction(analyze(before, "crypten", emulated, seq_len=8))
    assert record["network"] == {"name": "emulated", "bandwidth_mbps": 100.0, "rtt_ms": 80.0}
    assert math.isclose(record["latency_s"], record["compute_s"] + record["network_s"], abs_tol=2e-6)
    assert math.isclose(sum(record["by_op_latency_s"].values()), record["latency_s"], rel_tol=1e-3)


def test_every_compute_figure_says_where_it_comes_from():
    crypten = load_profile("crypten").data
    compute = crypten["source"]["compute"]
    assert {"cpu", "cores", "date", "command", "repetitions", "statistic"} <= set(compute)
    assert compute["repetitions"] >= 3 and compute["statistic"] == "median"
    timed = [name for name, entry in crypten["ops"].items() if "seconds" in entry]
    assert {"softmax", "matmul", "linear", "gelu", "layernorm", "matmul/masked-weight"} <= set(timed)
    spu = load_profile("spu-cheetah").data["latency"]
    assert spu["loopback_source"]["kind"] == "measured" and "command" in spu["loopback_source"]
    assert load_profile("bumblebee").data["source"]["kind"] == "fitted"  # the paper's reference


def test_fit_linear_keeps_costs_non_negative():
    rows = [{"calls": 1, "elements": n} for n in (10, 100, 1000)]
    coefficients, residual = fit_linear(rows, [0.5 + 0.01 * n for n in (10, 100, 1000)], ("calls", "elements"))
    assert coefficients == pytest.approx({"calls": 0.5, "elements": 0.01}) and residual < 1e-9
    falling, _ = fit_linear(rows, [3.0, 2.0, 1.0], ("calls", "elements"))
    assert all(c >= 0 for c in falling.values())
    entry = fit_seconds([{"steps": [{"features": r}], "seconds": 0.5 + 0.01 * r["elements"]} for r in rows],
                        ("calls", "elements"))
    assert entry["seconds"]["elements"] == pytest.approx(0.01) and entry["seconds_fit"]["points"] == 3
    assert median_seconds([3.0, 1.0, 2.0]) == 2.0


def test_timed_profiles_report_the_median_run_and_the_first_runs_counters():
    warm = {"seconds": 9.0, "rounds": 1, "bytes": 1}
    runs = [{"seconds": s, "rounds": r, "bytes": 100, "by_op": {}} for s, r in ((3.0, 10), (1.0, 2000), (2.0, 10))]
    grouped = timed_profiles([warm, *runs], programs=1, repetitions=3)
    assert grouped[0] is warm
    chosen = grouped[1]
    assert chosen["seconds"] == 2.0 and chosen["rounds"] == 10  # the first run's counters: no refill paid
    assert chosen["timing"] == {"repetitions": 3, "statistic": "median", "all_seconds": [3.0, 1.0, 2.0],
                                "all_rounds": [10, 2000, 10], "all_bytes": [100, 100, 100]}
    with pytest.raises(ValueError):
        timed_profiles([warm, *runs], programs=2, repetitions=3)


def test_timed_forward_repeats_the_online_pass_and_reports_the_median():
    from aero_compile.records import OpCost
    from aero_compile.targets.crypten.party import timed_forward

    class Private:
        def __init__(self):
            self.calls = 0

        def forward(self):
            self.calls += 1
            return Logits(self.calls), OpCost(rounds=7, bytes=70, seconds=[0.3, 0.1, 0.2][self.calls - 1])

    class Logits:
        def __init__(self, run, copy=False):
            self.run, self.copy = run, copy

        def clone(self):
            return Logits(self.run, copy=True)

    private = Private()
    logits, measure, timing = timed_forward(private, 3)
    assert private.calls == 3 and measure.seconds == 0.2
    assert (logits.run, logits.copy) == (1, True)  # the first run's, copied before the next pass reuses the graph
    assert timing == {"repetitions": 3, "statistic": "median", "all_seconds": [0.3, 0.1, 0.2]}


def test_a_calibration_keeps_the_delays_measured_under_emulated_links():
    from aero_compile.cost.latency import keep_measured_delays
    from aero_compile.targets.crypten.compute_timing import latency_section

    shipped = load_profile("crypten").data["latency"]
    kept = keep_measured_delays(latency_section(shipped.get("dealer")), shipped)
    assert kept["one_way_delays_per_round"] == shipped["one_way_delays_per_round"] and kept["measured"] == shipped["measured"]
    assert kept["dealer"] == shipped["dealer"]
    fresh = latency_section()
    assert keep_measured_delays(fresh, {"one_way_delays_per_round": 9.0}) == fresh  # unmeasured: the calibrator's


def test_ttp_rounds_pay_the_fitted_per_round_seconds_on_a_link_only(tiny):
    # fitted under emulated links at 1/10/40 ms: a ttp round = 2.07 one-way delays + 0.44 ms (docs/latency.md)
    before, _ = tiny
    dealer = load_profile("crypten").data["latency"]["dealer"]
    assert dealer["link_s_per_round"] > 0
    model = LatencyModel.of(load_profile("crypten"), "ttp")
    lan = Network("lan", 1000.0, 1.0)
    assert math.isclose(model.network_s(100, 0.0, lan),
                        100 * (2 * dealer["round_trips_per_round"] * 0.0005 + dealer["link_s_per_round"]), rel_tol=1e-9)
    assert model.network_s(100, 0.0, resolve_network("loopback")) == 0.0
    assert LatencyModel.of(load_profile("crypten")).link_s_per_round == 0.0  # tfp: the mechanism's 1 delay, no more


def test_an_emulated_link_adds_the_relays_cpu_and_a_real_one_does_not(tiny):
    # the relay shares the parties' cores: its CPU per message (both directions; ttp: the dealer's round trips
    # too) and per byte (both directions) is priced on an emulated link only (relay.json, relay_cost.py)
    from aero_compile.cost.latency import relay_cost

    before, _ = tiny
    cost = relay_cost()
    assert cost["s_per_message"] > 0 and cost["s_per_byte"] > 0 and cost["cpu"] and cost["command"]
    real, emulated = Network("lan", 1000.0, 1.0), run_network({"bandwidth_mbps": 1000, "rtt_ms": 1, "emulated": True})
    for provider in ("tfp", "ttp"):
        model = LatencyModel.of(load_profile("crypten"), provider)
        expected = (2 * 100 * (1 + model.dealer_round_trips_per_round) * cost["s_per_message"]
                    + 2 * 1e6 * cost["s_per_byte"])
        assert model.emulation_s(100, 1e6, real) == 0.0
        assert math.isclose(model.network_s(100, 1e6, emulated) - model.network_s(100, 1e6, real), expected, rel_tol=1e-9)
    a_real_run = analyze(before, "crypten", real, seq_len=8)
    an_emulated_run = analyze(before, "crypten", emulated, seq_len=8)
    assert a_real_run.emulation_s == 0.0 and an_emulated_run.emulation_s > 0
    assert math.isclose(an_emulated_run.latency_s - a_real_run.latency_s, an_emulated_run.emulation_s, rel_tol=1e-9)
    assert latency_prediction(an_emulated_run)["emulation_s"] == round(an_emulated_run.emulation_s, 6)


def test_the_relay_cost_measurement_runs_and_separates_messages_from_bytes():
    from aero_compile.targets.private.link.relay_cost import measure

    result = measure(small=(64, 200), large=(1 << 16, 20))  # a short run: the shape of the record, not its figures
    idle, few, many = result["cases"]
    assert idle["messages"] == 0 and few["messages"] == 400 and many["bytes"] == 40 * ((1 << 16) + 8)
    assert all(case["cpu_seconds"] is not None for case in result["cases"])
    assert result["s_per_message"] >= 0 and result["s_per_byte"] >= 0 and result["cores"] >= 1
