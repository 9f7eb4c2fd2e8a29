"""CrypTen settings: the analyzer prices each measured variant, a private run under them costs that, the tuner
keeps the cheapest that agrees with plaintext."""

import pytest

from aero_compile.cost import analyze
from aero_compile.errors import AeroError
from aero_compile.targets.crypten.protocol_settings import CANDIDATES, DEFAULT_SETTINGS, ProtocolSettings

pytestmark = pytest.mark.crypten

SEQ_LEN = 4


def test_settings_name_the_profile_variant_that_prices_them():
    settings = ProtocolSettings(precision_bits=18, exp_iterations=12, reciprocal_iterations=12)
    assert settings.cost_key() == "exp12-rec12-sqrt3-log_reduction"
    assert ProtocolSettings.from_cost_key(settings.cost_key(), precision_bits=18) == settings
    with pytest.raises(AeroError, match="precision_bits must lie in"):
        ProtocolSettings(precision_bits=40)
    with pytest.raises(AeroError, match="not of the form expN-recN-sqrtN-MAXMETHOD"):
        ProtocolSettings.from_cost_key("fast")


def test_every_candidate_is_priced_and_more_iterations_cost_more_rounds(captured):
    gm = captured("gpt2-tiny")
    reports = [analyze(gm, seq_len=8, protocol_settings=s.cost_key()) for s in CANDIDATES]
    assert reports[0].rounds == analyze(gm, seq_len=8).rounds  # the defaults are the profile itself
    softmax = [r.by_op["softmax"].rounds for r in reports]
    assert softmax == sorted(softmax) and softmax[-1] > softmax[0]
    with pytest.raises(AeroError, match=r"calibrate crypten --settings exp99-rec10-sqrt3-log_reduction"):
        analyze(gm, seq_len=8, protocol_settings="exp99-rec10-sqrt3-log_reduction")


@pytest.mark.slow  # a private run per candidate setting
def test_tuner_keeps_the_cheapest_setting_that_agrees_and_its_run_costs_what_was_predicted(captured):
    from aero_compile.pass_manager import PassManager
    from aero_compile.targets.crypten.tuner import tune, tuning_record

    before = captured("gpt2-tiny")
    after = PassManager.from_pipeline("all").run(before).graph_module
    more_exp = ProtocolSettings(exp_iterations=10)
    chosen, tried = tune({"after": after}, seq_len=SEQ_LEN, candidates=(more_exp, DEFAULT_SETTINGS))
    assert [c.cost_key for c in tried] == [more_exp.cost_key(), DEFAULT_SETTINGS.cost_key()]
    assert all(c.meets_target for c in tried) and chosen is tried[1]  # both agree: the defaults are cheaper
    for candidate in tried:  # the run under each setting costs what the analyzer predicted for it
        assert candidate.measured["after"]["rounds"] == candidate.predicted_rounds
        assert candidate.measured["after"]["settings"] == candidate.settings
    assert tried[0].predicted_rounds > tried[1].predicted_rounds
    record = tuning_record(chosen, tried, 0.99, SEQ_LEN)
    assert record["chosen"] == DEFAULT_SETTINGS.cost_key() and len(record["candidates"]) == 2
    assert set(record["candidates"][0]) >= {"settings", "predicted_rounds", "predicted_bytes", "argmax_agreement"}
