"""The pass manager owns the order (phases); FFN activation passes touch FFN activations only;
the README's "A new pass" example is the real file and runs."""

import re
from pathlib import Path

import torch
import torch.fx as fx

import aero_compile as ac
from aero_compile.blocks import ffn_activations
from aero_compile.ops import OpKind, classify_graph
from aero_compile.pass_manager import PASSES, Phase, expand_pipeline, order_by_phase

REPO = Path(__file__).resolve().parents[1]


def _counts(gm):
    counts = {}
    for op in classify_graph(gm):
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return counts


def test_order_is_by_phase_and_stable_within_a_phase():
    items = expand_pipeline("fold-linear,entropy-hooks,scale-ffn,gelu-to-identity,remove-layernorm,canonicalize")
    names = [name for name, _ in order_by_phase(items)]
    assert names == ["canonicalize", "gelu-to-identity", "remove-layernorm", "scale-ffn", "fold-linear",
                     "entropy-hooks"]
    # within one phase the written order is kept, both ways round
    assert [n for n, _ in order_by_phase(expand_pipeline("remove-layernorm,gelu-to-relu"))] == \
        ["remove-layernorm", "gelu-to-relu"]
    assert [n for n, _ in order_by_phase(expand_pipeline("gelu-to-relu,remove-layernorm"))] == \
        ["gelu-to-relu", "remove-layernorm"]


def test_every_pass_names_a_phase_and_none_names_another_pass():
    for info in PASSES.values():
        assert isinstance(info.phase, Phase)
    for path in (REPO / "passes").glob("*.py"):
        source = path.read_text()
        others = [name for name in PASSES if name in source and f'"{name}"' in source
                  and not re.search(rf'register_pass\(\s*"{re.escape(name)}"', source)]
        assert not others, f"{path.name} names other passes {others}: ordering belongs to the pass manager"


class _ReluOutsideFFN(torch.nn.Module):
    """A block whose attention-like branch uses a ReLU (not an FFN) and whose MLP uses one too."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.attn = _Scores()
        self.h = torch.nn.ModuleList([_Block()])
        self.head = torch.nn.Linear(8, 16)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.h:
            x = block(x)
        return self.head(x + self.attn(x))


class _Scores(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.proj(x))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))

    def forward(self, x):
        return x + self.mlp(x)


def test_activation_passes_leave_relus_outside_ffn_blocks():
    gm = ac.capture(_ReluOutsideFFN(), name="relu-outside-ffn")
    assert _counts(gm)[OpKind.RELU] == 2
    inside, outside = ffn_activations(gm, {OpKind.RELU})
    assert len(inside) == 1 and len(outside) == 1
    result = ac.PassManager.from_pipeline("gelu-to-identity{relu=true}").run(gm)
    entry = result.report.passes[0]
    assert entry.changed == 1
    assert any("outside FFN blocks" in note for note in entry.notes)
    assert _counts(result.graph_module).get(OpKind.RELU, 0) == 1  # the non-FFN ReLU survives


def test_readme_new_pass_example_is_the_real_file_and_runs(captured):
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example:new-pass (\S+) -->\n```python\n(.*?)\n```", readme, re.S)
    assert match, "README lost its 'A new pass' example"
    path, shown = match.groups()
    assert shown == (REPO / path).read_text().rstrip("\n"), f"README's copy of {path} is stale"
    assert f"from . import" in (REPO / "passes" / "__init__.py").read_text()
    module = Path(path).stem
    assert re.search(rf"\b{module}\b", (REPO / "passes" / "__init__.py").read_text()), \
        f"{path} is not registered in passes/__init__.py"
    name = re.search(r'register_pass\("([^"]+)"', shown).group(1)
    result = ac.PassManager.from_pipeline(name).run(captured("gpt2-tiny"))
    assert result.report.passes[0].changed > 0


def test_a_pass_registered_from_user_code_is_placed_by_its_phase(captured):
    @ac.register_pass("test-count-softmax", preserves_computation=True, phase=Phase.INSTRUMENT,
                      summary="test: counts softmaxes, changes nothing")
    def count_softmax(gm: fx.GraphModule):
        return ac.PassResult(gm, sum(1 for op in classify_graph(gm) if op.kind is OpKind.SOFTMAX))

    try:
        manager = ac.PassManager.from_pipeline("test-count-softmax,remove-layernorm")
        assert [name for name, _ in manager.items] == ["remove-layernorm", "test-count-softmax"]
        result = manager.run(captured("gpt2-tiny"))
        assert result.report.passes[1].changed == 2
    finally:
        PASSES.pop("test-count-softmax")
