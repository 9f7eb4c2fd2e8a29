"""Cost per generated token: prefill and decode steps priced by the analyzer, beside re-running."""

import json
import warnings

import pytest
import torch

import aero_compile as ac
from aero_compile.cli import main
from aero_compile.cost.analyzer import analyze
from aero_compile.generation import derive_programs
from aero_compile.generation.pricing import SymbolicShapes, _decode_inputs, price_generation
from aero_compile.shapes import _MetaRecorder, propagate_shapes

warnings.filterwarnings("ignore")


def _real_metas(program, *inputs):
    recorder = _MetaRecorder(program)
    with torch.no_grad():
        recorder.run(*inputs)
    return recorder.metas


def test_symbolic_shapes_price_as_a_real_run(captured):
    """Shapes evaluated from one symbolic trace give the analyzer the same figures as a real run at that context."""
    gm = captured("gpt2-tiny")
    programs = derive_programs(gm)
    _, *cache = programs.prefill(torch.zeros(1, 20, dtype=torch.long))
    real = analyze(programs.decode, seq_len=21, metas=_real_metas(programs.decode, torch.zeros(1, 1, dtype=torch.long), *cache))
    cost = price_generation(gm, programs, prompt_tokens=20, new_tokens=3, profile="crypten")
    assert [s.context for s in cost.decode] == [21, 22]
    assert (cost.decode[0].rounds, cost.decode[0].bytes) == (real.rounds, real.bytes)
    rerun = [analyze(gm, seq_len=length) for length in (20, 21, 22)]
    assert cost.rerun.bytes == sum(r.bytes for r in rerun) and cost.rerun.rounds == sum(r.rounds for r in rerun)
    assert cost.prefill.bytes == analyze(programs.prefill, seq_len=20).bytes
    assert cost.total.bytes == cost.prefill.bytes + sum(s.bytes for s in cost.decode)
    assert cost.decode[1].bytes > cost.decode[0].bytes  # attention grows with the context


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", [None, "all", "all,softmax-to-quad{norm=length}",
                                      "all,softmax-to-quad{norm=length},fold-scales"])
def test_gpt2_small_decode_step_is_20x_cheaper_than_rerunning(captured, pipeline):
    """GPT-2 small, context 128, CrypTen, weights masked once (and so the K/V cache's rows): one decode step vs
    re-running 129 tokens, in bytes, both as the step at context 129 and as the total minus the prefill."""
    gm = captured("gpt2")
    if pipeline:
        gm = ac.PassManager.from_pipeline(pipeline).run(gm).graph_module
    cost = price_generation(gm, derive_programs(gm), prompt_tokens=128, new_tokens=2, profile="crypten",
                            weight_masks="per-model")
    step, rerun = cost.decode[0], cost.rerun_steps[1]
    assert step.context == rerun.context == 129
    assert rerun.bytes >= 20 * step.bytes, (rerun.bytes, step.bytes)
    assert cost.rerun.bytes - cost.prefill.bytes >= 20 * step.bytes, (cost.rerun.bytes, cost.prefill.bytes, step.bytes)


@pytest.mark.parametrize("pipeline", [None, "all,softmax-to-quad{norm=length}"])
def test_a_decode_step_opens_the_new_cache_rows_only_with_weights_masked_once(captured, pipeline):
    """The analyzer's side of the cache masked row by row: a decode step's attention products are priced as the
    query (or attention weights) plus the new K (or V) row, whatever the context; per query, the whole cache."""
    from aero_compile.secrecy import cache_factors, propagate_secrecy

    gm = captured("gpt2-tiny")
    if pipeline:
        gm = ac.PassManager.from_pipeline(pipeline).run(gm).graph_module
    programs = derive_programs(gm)
    shapes = SymbolicShapes(programs.decode, _decode_inputs(programs, 1))
    for context in (6, 30):
        metas = shapes.at(context - 1)
        factors = cache_factors(programs.decode, propagate_secrecy(programs.decode), metas)
        assert len(factors) == 4 and all(f.past_rows == context - 1 and f.rows == context for f in factors.values())
        masked, per_query = (analyze(programs.decode, seq_len=context, metas=metas, weight_masks=mode).by_op["matmul"]
                             for mode in ("per-model", "per-query"))
        # 2 layers; q.K^T: q (64) + a K row (64); p.V: p (4 heads x context) + a V row (64); 16 bytes an element
        assert masked.bytes == 16 * 2 * (64 + 64 + 4 * context + 64), (context, masked)
        assert per_query.bytes == 16 * 2 * (64 + 4 * context + 2 * 64 * context), (context, per_query)
        assert masked.rounds == per_query.rounds  # the new rows go in the product's own opening: no round added
    # the prefill masks every row of its products' cached factor: the bytes of a plain product, as before
    prefill = analyze(programs.prefill, seq_len=5)
    assert prefill.by_op["matmul"].bytes == analyze(programs.prefill, seq_len=5, weight_masks="per-query").by_op["matmul"].bytes
    # the full-sequence graph has no cache: nothing changes there
    assert not cache_factors(gm, propagate_secrecy(gm), propagate_shapes(gm, seq_len=5))


def test_cli_generate_writes_generation_sections(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["gpt2-tiny", "--generate", "3", "--prompt-ids", "5,6,7,8", "--report-json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "generation cost (crypten): prompt 4 tokens, 3 new tokens" in out
    data = json.loads(report.read_text())
    for side in ("before", "after"):
        section = data[side]["generation"]
        assert section["prompt_tokens"] == 4 and section["new_tokens"] == 3
        assert [step["context"] for step in section["decode"]] == [5, 6]
        assert set(section["prefill"]) == {"rounds", "bytes", "latency_s"} == set(section["rerun"])
        assert section["rerun"]["bytes"] > section["total"]["bytes"]
        assert "cost" in data[side]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Checks that need no model must fail before any model is loaded."""
    import sys

    import aero_compile.capturing  # noqa: F401  these bind load_model when imported: import them with the real
    import aero_compile.loader as loader
    import aero_compile.training.model  # noqa: F401  one, so that no later test inherits the refusal

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad flag was refused")

    real = loader.load_model
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("aero_compile")]:
        if getattr(module, "load_model", None) is real:
            monkeypatch.setattr(module, "load_model", refuse)


@pytest.fixture
def no_pass_runs(monkeypatch):
    """Checks that need the captured graph must fail before any pass runs."""
    from aero_compile.pass_manager import PassManager

    def refuse(*args, **kwargs):
        raise AssertionError("a pass ran before the bad input was refused")

    monkeypatch.setattr(PassManager, "run", refuse)


@pytest.mark.parametrize("args, message", [
    (["--generate", "2", "--prompt", "   "], "--prompt is empty"),
    (["--generate", "2", "--prompt-ids", ""], "--prompt-ids is empty"),
    (["--generate", "2", "--prompt-ids", "1,x"], "non-negative integers"),
    (["--generate", "2", "--prompt", "hello"], "has none"),
    (["--generate", "0"], "--generate must be a positive"),
    (["--prompt-ids", "1,2"], "add --generate N"),
])
def test_bad_generation_flags_fail_before_loading(args, message, capsys, no_model_loading):
    assert main(["gpt2-tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("args, message", [
    (["--generate", "2", "--prompt-ids", ",".join(["1"] * 257)], "context is 256"),
    (["--generate", "200", "--seq-len", "100"], "runs past the model's context of 256"),
    (["--generate", "2", "--prompt-ids", "1,300"], "outside the model's vocabulary"),
])
def test_prompts_that_do_not_fit_are_refused_in_one_line(args, message, capsys, no_pass_runs):
    assert main(["gpt2-tiny", "--no-cost", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


class _NoAttention(torch.nn.Module):
    """A causal model without attention: each position's logits from its own token only."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))


def test_a_model_without_decode_step_is_refused(tmp_path, capsys, no_pass_runs):
    path = tmp_path / "no_attention.pt2"
    torch.export.save(torch.export.export(_NoAttention(), (torch.zeros(2, 8, dtype=torch.long),),
                                          dynamic_shapes=({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},)), path)
    assert main([str(path), "--no-cost", "--generate", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot derive a decode step" in err and "\n" not in err


@pytest.mark.slow
def test_prompt_text_goes_through_the_given_tokenizer(tmp_path, capsys):
    from aero_compile.training.tokenizer import train_bpe

    tokenizer = train_bpe(["the cat sat on the mat", "a dog ran in the park"] * 20, 256)
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_str())
    ids = tokenizer.encode("the cat ran").ids
    assert main(["gpt2-tiny", "--passes", "none", "--no-cost", "--generate", "2", "--prompt", "the cat ran",
                 "--tokenizer", str(path)]) == 0
    out = capsys.readouterr().out
    assert "greedy tokens before the passes" in out
    assert main(["gpt2-tiny", "--passes", "none", "--generate", "2", "--prompt", "the cat ran",
                 "--tokenizer", str(path), "--report-json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["before"]["generation"]["prompt_tokens"] == len(ids)


@pytest.mark.parametrize("args, message", [
    (["--generate", "2", "--run-private", "--engine", "spu", "--spu-party", "1", "--spu-addresses",
      "127.0.0.1:9530,127.0.0.1:9531", "--insecure-link"], "add --prompt TEXT or --prompt-ids"),  # SPU: the client's
    # between hosts CrypTen generates (tests/test_generation_multihost.py); a party needs its environment first
    (["--generate", "2", "--party", "--insecure-link"], "--party needs the environment variables RANK"),
])
def test_private_generation_between_hosts_is_refused(args, message, capsys, no_model_loading):
    assert main(["gpt2-tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def _measured_softmax(length: int) -> dict:
    """CrypTen's own rounds and bytes per row of a softmax over ``length``, as the profile's calibration stored them."""
    from aero_compile.cost.profiles import load_profile

    rows = [m for m in load_profile("crypten").data["measurements"] if m["form"] == "softmax" and m["length"] == length]
    assert rows, f"the crypten profile stores no softmax measured at length {length}"
    return {"rounds": rows[0]["rounds"], "bytes_per_row": rows[0]["bytes"] / rows[0]["rows"]}


def test_decode_step_softmax_is_priced_as_crypten_measured_it(captured):
    """A decode step's softmax (one query row per head, ``context`` keys) costs what CrypTen took at that key
    length, where lengths that are not powers of two change the log-reduction max's shape."""
    gm = captured("gpt2-tiny")
    programs = derive_programs(gm)
    shapes = SymbolicShapes(programs.decode, _decode_inputs(programs, 1))
    for context in (6, 9, 17):  # 84, 94 and 95 rounds: between the powers of two the table was measured at
        report = analyze(programs.decode, "crypten", seq_len=context, metas=shapes.at(context - 1))
        softmaxes = [r for r in report.ops if r.kind == "softmax"]
        measured = _measured_softmax(context)
        assert softmaxes and not report.approximate
        for op in softmaxes:  # gpt2-tiny: 4 heads, one query row each
            assert op.rounds == measured["rounds"], (context, op.node, op.rounds, measured)
            assert op.bytes == 4 * measured["bytes_per_row"], (context, op.node, op.bytes, measured)


@pytest.mark.crypten
@pytest.mark.slow
@pytest.mark.parametrize("pipeline", [None, "all"])
def test_each_crypten_decode_step_costs_what_the_analyzer_prices(captured, pipeline):
    """Measured rounds equal the analyzer's and bytes are within 1%, at short contexts (9, 10: the max
    reduces 9 and 10 keys) and longer ones (62, 63), before and after ``all`` (softmax kept)."""
    from aero_compile.targets.crypten.generation import generate_privately

    gm = captured("gpt2-tiny")
    if pipeline:
        gm = ac.PassManager.from_pipeline(pipeline).run(gm).graph_module
    programs = derive_programs(gm)
    for prompt_tokens in (8, 61):
        prompt = torch.randint(0, 256, (1, prompt_tokens), generator=torch.Generator().manual_seed(3))
        result = generate_privately(gm, prompt, 3)
        predicted = price_generation(gm, programs, prompt_tokens, 3, profile="crypten").decode
        measured = result["decode"][1:]  # the first entry is the prefill
        assert [m["context"] for m in measured] == [p.context for p in predicted] == [prompt_tokens + 1,
                                                                                     prompt_tokens + 2]
        for m, p in zip(measured, predicted):
            assert m["rounds"] == p.rounds, (m, p)
            assert abs(m["bytes"] - p.bytes) <= 0.01 * m["bytes"], (m, p)
