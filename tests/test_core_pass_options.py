"""Pass options: typed and checked before any work; a pass that is not idempotent runs once; a pass that
finds the blocks it acts on in fewer layers than the model has says so in its notes."""

import pytest
import torch

import aero_compile as ac
from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.pass_manager import PASSES, known_pass_names


@pytest.mark.parametrize("pipeline, message", [
    ("gelu-to-identity{relu=maybe}", "pass 'gelu-to-identity': relu must be true or false, not 'maybe'"),
    ("gelu-to-identity{silu=1}", "pass 'gelu-to-identity': silu must be true or false, not 1"),
    ("prune-ffn{last=-1}", "pass 'prune-ffn': last must be an integer >= 0, at most the model's layers, not -1"),
    ("prune-ffn{last=abc}", "pass 'prune-ffn': last must be an integer >= 0, at most the model's layers, not 'abc'"),
    ("prune-ffn{last=1.5}", "pass 'prune-ffn': last must be an integer >= 0, at most the model's layers, not 1.5"),
    ("softmax-to-relu{norm=max}", "pass 'softmax-to-relu': norm must be one of length, sum, not 'max'"),
    ("softmax-to-quad{c=0}", "pass 'softmax-to-quad': c must be non-zero, not 0"),
    ("softmax-to-quad{c=big}", "pass 'softmax-to-quad': c must be a non-zero number in [-1000, 1000], not 'big'"),
    ("softmax-to-quad{norm=max}", "pass 'softmax-to-quad': norm must be one of sum, length, not 'max'"),
    ("softmax-no-max{bound=high}", "pass 'softmax-no-max': bound must be a number in [-1000, 1000], not 'high'"),
    ("softmax-no-max{calibrate=0}", "pass 'softmax-no-max': calibrate must be an integer in [1, 1024], not 0"),
    ("softmax-no-max{tokens=web}", "pass 'softmax-no-max': unknown calibration source 'web': tokens must be one "
                                   "of random, corpus"),
    ("softmax-no-max{calib_len=2.5}", "pass 'softmax-no-max': calib_len must be an integer in [1, 4096], not 2.5"),
    ("linearize-heads{uniform_tol=-0.1}", "pass 'linearize-heads': uniform_tol must be a number in [0, 1] nats, not -0.1"),
    ("linearize-heads{offset_mass=0}", "pass 'linearize-heads': offset_mass must be a number in (0, 1], not 0"),
    ("linearize-heads{offset_mass=1.5}", "pass 'linearize-heads': offset_mass must be a number in (0, 1], not 1.5"),
    ("linearize-heads{max_offset=-1}", "pass 'linearize-heads': max_offset must be an integer in [0, 4096], not -1"),
    ("linearize-heads{calibrate=0}", "pass 'linearize-heads': calibrate must be an integer in [1, 1024], not 0"),
    ("linearize-heads{dry_run=perhaps}", "pass 'linearize-heads': dry_run must be true or false, not 'perhaps'"),
    ("entropy-hooks{temperature=layer}", "pass 'entropy-hooks': temperature must be one of none, head, position, "
                                         "not 'layer'"),
    ("all,all", "pass 'scale-ffn' appears 2 times in the pipeline ('all,all'), but it may run only once"),
    ("prune-ffn,remove-layernorm,prune-ffn{last=1}", "pass 'prune-ffn' appears 2 times"),
    ("entropy-hooks,entropy-hooks", "pass 'entropy-hooks' appears 2 times"),
])
def test_bad_options_and_repeated_passes_are_refused_when_the_pipeline_is_parsed(pipeline, message):
    with pytest.raises(AeroError) as error:
        ac.PassManager.from_pipeline(pipeline)  # no model: the pipeline alone is checked
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_cli_refuses_a_bad_option_before_loading_anything(capsys):
    # the model does not exist: had the CLI loaded it first, the error would name the file
    assert main(["./no-such-model.pt2", "--passes", "gelu-to-identity{relu=maybe}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "aero-compile: error: pass 'gelu-to-identity': relu must be true or false, not 'maybe'"


def test_a_range_the_model_sets_is_checked_before_the_first_pass(captured):
    manager = ac.PassManager.from_pipeline("remove-layernorm,prune-ffn{last=100}")
    with pytest.raises(AeroError) as error:
        manager.run(captured("gpt2-tiny"))
    assert str(error.value) == ("pass 'prune-ffn': last must be an integer in [0, 2] (the model has 2 layers), "
                                "not 100")
    assert ac.PassManager.from_pipeline("prune-ffn{last=2}").run(captured("gpt2-tiny")).report.passes[0].changed == 2


def test_typed_values_reach_the_pass_and_idempotent_passes_may_repeat():
    manager = ac.PassManager.from_pipeline("softmax-to-quad{c=3},gelu-to-identity{relu=yes},canonicalize,canonicalize")
    assert manager.items[0] == ("canonicalize", {}) and ("softmax-to-quad", {"c": 3.0}) in manager.items
    assert ("gelu-to-identity", {"relu": True}) in manager.items
    assert isinstance(dict(manager.items)["softmax-to-quad"]["c"], float)


def test_every_builtin_option_has_a_type():
    known_pass_names()
    untyped = [(name, key) for name, info in PASSES.items() if not name.startswith("test-")
               for key, spec in info.schema.items() if spec is None]
    assert untyped == []
    assert {name for name, info in PASSES.items() if info.once} >= {"scale-ffn", "entropy-hooks", "prune-ffn"}


class _OddBlock(torch.nn.Module):
    """An FFN no rule recognises: not named like one, and a square (not an activation) between its linears."""

    def __init__(self, width):
        super().__init__()
        self.up, self.down = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)

    def forward(self, x):
        hidden = self.up(x)
        return x + self.down(hidden * hidden)


class _Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width))

    def forward(self, x):
        return x + self.mlp(x)


class _TwoLayers(torch.nn.Module):
    def __init__(self, width=8, vocab=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.layers = torch.nn.ModuleList([_Block(width), _OddBlock(width)])
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_ffn_passes_say_when_they_find_fewer_ffns_than_layers():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gm = ac.capture(_TwoLayers(), name="two-layers")
    report = ac.PassManager.from_pipeline("scale-ffn,prune-ffn{last=1}", seq_len=8).run(gm).report
    scale, prune = report.passes
    assert scale.changed == 1 and prune.changed == 1
    assert scale.notes == ["found an FFN in 1 of the model's 2 layers: none recognised in layer(s) 1, left unscaled"]
    assert prune.notes[0].startswith("found an FFN in 1 of the model's 2 layers: none recognised in layer(s) 1")
