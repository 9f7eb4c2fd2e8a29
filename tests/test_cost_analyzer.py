"""The cost analyzer on small models: secrecy, totals, schedules, networks, errors, unknown ops, CLI."""

import json
import math
from collections import Counter

import pytest
import torch

from aero_compile.cost import analyze, load_profile, resolve_network
from aero_compile.cost.profiles import Profile
from aero_compile.secrecy import Secrecy, propagate_secrecy
from aero_compile.errors import AeroError
from aero_compile.ops import OpKind, classify_node, target_name


@pytest.fixture(scope="module")
def tiny(captured, rewritten_all):
    return captured("gpt2-tiny"), rewritten_all("gpt2-tiny")


def test_secrecy_tokens_secret_masks_public_parameter_math_owner(tiny):
    _, after = tiny
    levels = propagate_secrecy(after)
    nodes = list(after.graph.nodes)
    reciprocals = [n for n in nodes if n.op == "call_function" and target_name(n) == "reciprocal"]
    assert reciprocals and all(levels[n] is Secrecy.OWNER for n in reciprocals)  # 1/alpha: the owner's, free
    masks = [n for n in nodes if n.op == "call_function" and target_name(n) == "bitwise_not"]
    assert masks and all(levels[n] is Secrecy.PUBLIC for n in masks)  # causal mask from a buffer
    softmaxes = [n for n in nodes if classify_node(after, n) is OpKind.SOFTMAX]
    assert softmaxes and all(levels[n] is Secrecy.SECRET for n in softmaxes)


def test_owner_only_and_public_ops_cost_nothing(tiny):
    _, after = tiny
    report = analyze(after, "crypten", "wan", seq_len=8)
    free = {n.name for n in after.graph.nodes if n.op == "call_function"
            and target_name(n) in ("reciprocal", "bitwise_not", "masked_fill")}
    assert len(free) == 6  # per layer: 1/alpha, the mask's not, its fill
    assert not free & {r.name for r in report.ops}
    assert "div" not in report.by_op  # reciprocal(alpha) is not a secret division
    # the position embedding reads public positions and an owner table: the owner adds it in the clear
    assert report.by_op["embedding"].count == 1


def test_totals_are_the_sum_of_the_breakdowns(tiny):
    before, _ = tiny
    for profile in ("crypten", "bumblebee"):
        report = analyze(before, profile, "wan", seq_len=16)
        for table in (report.by_op, report.by_layer):
            assert sum(c.rounds for c in table.values()) == report.rounds
            assert abs(sum(c.bytes for c in table.values()) - report.bytes) <= 1  # report.bytes is rounded
            assert math.isclose(sum(c.latency_s for c in table.values()), report.latency_s, rel_tol=1e-9)


def test_crypten_latency_is_sequential_rounds_times_the_measured_delays_plus_half_the_bytes_plus_compute(tiny):
    """WAN (80 ms RTT): a round waits one one-way delay (LinkCommunicator's simultaneous exchange, measured
    under emulated links); under ttp the owner's dealer round trip is the longer wait (max, not sum)."""
    before, _ = tiny
    latency = load_profile("crypten").data["latency"]
    assert latency["one_way_delays_per_round"] == 1.0
    report = analyze(before, "crypten", network="wan", seq_len=16)
    assert report.rounds == sum(r.rounds for r in report.ops)  # CrypTen runs ops one after another
    assert report.compute_s > 0  # measured by `aero-compile calibrate crypten --compute`
    transfer = report.bytes * 0.5 * 8 / 100e6
    assert math.isclose(report.latency_s, report.rounds * 0.040 + transfer + report.compute_s, rel_tol=1e-9)
    dealer = 2 * latency["dealer"]["round_trips_per_round"]
    ttp = analyze(before, "crypten", network="wan", seq_len=16, provider="ttp")
    per_round = 0.040 * max(1.0, dealer) + latency["dealer"]["link_s_per_round"]  # on a link: the fitted intercept
    assert math.isclose(ttp.latency_s - ttp.compute_s - transfer, ttp.rounds * per_round, rel_tol=1e-6)


def _both_schedules(gm):
    profile = load_profile("crypten")
    parallel = Profile("parallel", {**profile.data, "schedule": "critical_path"})
    return analyze(gm, profile, seq_len=16), analyze(gm, parallel, seq_len=16)


def test_critical_path_shares_rounds_between_independent_ops(captured):
    # GPT-NeoX's parallel residual: x + attn(ln1(x)) + mlp(ln2(x)). The FFN branch (48 rounds per
    # layer) runs beside the longer attention branch (119), so only the attention branch counts.
    sequential, critical = _both_schedules(captured("pythia-tiny"))
    assert critical.bytes == sequential.bytes
    assert critical.rounds < sequential.rounds
    off_path = [r for r in critical.ops if r.rounds and not r.on_critical_path]
    assert Counter((r.layer, r.kind) for r in off_path) == Counter(
        (layer, kind) for layer in (0, 1) for kind in ("layernorm", "linear", "gelu", "linear"))
    assert critical.rounds == sequential.rounds - sum(r.rounds for r in off_path)
    assert sum(r.rounds for r in critical.ops if r.on_critical_path) == critical.rounds
    assert sum(c.rounds for c in critical.by_op.values()) == critical.rounds  # breakdowns count the path only


def test_critical_path_of_a_chain_is_the_sum(captured):
    # GPT-2's blocks are one chain of ops with rounds (q @ k^T and the value path differ only by views):
    # nothing runs beside anything, so both schedules count every round.
    sequential, critical = _both_schedules(captured("gpt2-tiny"))
    assert critical.rounds == sequential.rounds
    assert all(r.on_critical_path for r in critical.ops if r.rounds)


def test_softmax_rounds_follow_the_measured_length_table(tiny):
    before, _ = tiny
    table = load_profile("crypten").ops["softmax"]["by_length"]
    for seq_len in (8, 16, 32):
        report = analyze(before, "crypten", seq_len=seq_len)
        softmax = [r for r in report.ops if r.kind == "softmax"]
        assert {r.rounds for r in softmax} == {table[str(seq_len)]["rounds"]}
        assert not report.approximate
    # between powers of two the log-reduction max's shape prices it exactly (CrypTen took 94 rounds at 12)
    odd = analyze(before, "crypten", seq_len=12)
    assert not odd.approximate and {r.rounds for r in odd.ops if r.kind == "softmax"} == {table["12"]["rounds"]} == {94}


def test_cost_grows_with_batch_except_the_weights(tiny):
    before, _ = tiny
    one, two = (analyze(before, "crypten", seq_len=8, batch=b, weight_masks="per-query") for b in (1, 2))
    assert two.rounds == one.rounds
    assert two.by_op["gelu"].bytes == 2 * one.by_op["gelu"].bytes
    assert one.by_op["linear"].bytes < two.by_op["linear"].bytes < 2 * one.by_op["linear"].bytes
    # masked once per model, the weights leave the per-query cost: it doubles, the offline setup does not move
    one, two = (analyze(before, "crypten", seq_len=8, batch=b) for b in (1, 2))
    assert two.by_op["linear"].bytes == 2 * one.by_op["linear"].bytes
    assert two.offline == one.offline and one.offline.bytes > 0


def test_layers_cost_the_same_and_totals_grow_linearly_with_depth(captured):
    reports = {n: analyze(captured(f"gpt2-tiny{{n_layer={n}}}"), "crypten", seq_len=8) for n in (1, 4)}
    layers = [v for k, v in reports[4].by_layer.items() if k.isdigit()]
    assert len(layers) == 4 and len({(c.rounds, c.bytes) for c in layers}) == 1
    assert reports[4].bytes - reports[1].bytes == pytest.approx(3 * layers[0].bytes, abs=2)
    assert reports[4].rounds - reports[1].rounds == 3 * layers[0].rounds
    graph = reports[4].graph
    assert graph.number_of_edges() < 3 * graph.number_of_nodes()  # sparse: linear in graph size


def test_unknown_ops_are_counted_named_and_warned(tiny):
    gm, name = _with_op_after_softmax(tiny[0], torch.ops.aten.logit.default)  # nobody classifies logit
    with pytest.warns(UserWarning, match="counted as zero"):
        report = analyze(gm, "crypten", seq_len=8)
    assert report.unsupported == {"unknown": [name]}
    assert report.to_dict()["unsupported_ops"] == {"unknown": [name]}


def _with_op_after_softmax(gm, target):
    """A copy of ``gm`` whose first softmax feeds ``target`` (one more op) before its users."""
    from aero_compile.capturing import clone_graph_module

    gm = clone_graph_module(gm)
    softmax = next(n for n in gm.graph.nodes if classify_node(gm, n) is OpKind.SOFTMAX)
    with gm.graph.inserting_after(softmax):
        extra = gm.graph.call_function(target, (softmax,))
    softmax.replace_all_uses_with(extra, delete_user_cb=lambda user: user is not extra)
    gm.recompile()
    return gm, extra.name


def test_bumblebee_reports_what_it_cannot_cost(tiny):
    # the paper never costs tanh, and the profile derives no price for it (exp it does: see derived)
    gm, name = _with_op_after_softmax(tiny[0], torch.ops.aten.tanh.default)
    with pytest.warns(UserWarning, match="cannot cost"):
        report = analyze(gm, "bumblebee", "wan", seq_len=8)
    assert report.unsupported == {"tanh": [f"{name} (tanh)"]} and "tanh" not in report.by_op
    assert analyze(gm, "crypten", seq_len=8).by_op["tanh"].count == 1  # measured under CrypTen


def test_networks_presets_and_overrides():
    assert resolve_network("wan").bandwidth_mbps == 100 and resolve_network("wan").rtt_ms == 80
    custom = resolve_network("lan", bandwidth_mbps=1000, rtt_ms=5)
    assert (custom.name, custom.bandwidth_mbps, custom.rtt_ms) == ("custom", 1000, 5)
    with pytest.raises(AeroError, match="unknown network"):
        resolve_network("moon")
    with pytest.raises(AeroError, match="bandwidth must be positive"):
        resolve_network("wan", bandwidth_mbps=0)
    with pytest.raises(AeroError, match="unknown protocol"):
        load_profile("aby3")


def test_cli_report_json_markdown_plot(tmp_path, capsys):
    from aero_compile.cli import main

    paths = {k: tmp_path / f"r.{k}" for k in ("json", "md", "png")}
    code = main(["gpt2-tiny", "--passes", "all", "--seq-len", "16", "--protocol", "bumblebee", "--network", "wan",
                 "--per-layer", "--report-json", str(paths["json"]), "--report-md", str(paths["md"]),
                 "--plot", str(paths["png"])])
    assert code == 0
    report = json.loads(paths["json"].read_text())
    for side in ("before", "after"):
        cost = report[side]["cost"]
        assert cost["protocol"] == "bumblebee" and cost["network"] == {"bandwidth_mbps": 100.0, "rtt_ms": 80.0}
        assert isinstance(cost["rounds"], int) and isinstance(cost["bytes"], int) and isinstance(cost["latency_s"], float)
        assert all(set(v) >= {"rounds", "bytes", "latency_s"} for v in cost["by_op"].values())
        assert set(cost["by_layer"]) == {"0", "1", "embed/head"}
        assert sum(v["rounds"] for v in cost["by_layer"].values()) == cost["rounds"]
    assert "gelu" in report["before"]["cost"]["by_op"] and "gelu" not in report["after"]["cost"]["by_op"]
    savings = report["savings"]
    assert set(savings) == {"bytes", "latency", "rounds"}
    assert savings["bytes"] == pytest.approx(report["before"]["cost"]["bytes"] / report["after"]["cost"]["bytes"], rel=1e-3)
    assert savings["bytes"] > 1 and savings["latency"] > 1
    assert "| softmax |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "communication" in capsys.readouterr().out


def test_cli_bad_protocol_is_one_line_error(capsys):
    from aero_compile.cli import main

    assert main(["gpt2-tiny", "--passes", "none", "--protocol", "nope", "--seq-len", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aero-compile: error: unknown protocol") and "\n" not in err


def test_bad_lengths_are_one_line_errors(tiny):
    before, _ = tiny
    with pytest.raises(AeroError, match="positive integers"):
        analyze(before, seq_len=0)
    with pytest.raises(AeroError, match="exceeds the model's context"):
        analyze(before, seq_len=10**6)
