"""--distill: the loss terms against a hand computation, a frozen teacher, layers matched from the graph
in four families, an exact resume, and the command line end to end."""

import copy
import json

import pytest
import torch
import torch.nn as nn

from aero_compile.cli import main
from aero_compile.models import build_builtin
from aero_compile.training import TrainConfig, train
from aero_compile.training.config import DistillWeights
from aero_compile.training.distill import DistillingLM, block_outputs, tapped
from aero_compile.training.model import build_graph, make_trainable

SMALL = dict(model="gpt2-tiny", corpus_max_bytes=300_000, batch_size=4, seq_len=32, eval_batches=1, quiet=True,
             lr=3e-3, pictures=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("aero-cache"))


WEIGHTS = DistillWeights(kl=1.0, temperature=2.0, hidden=1.0, attention=1.0, lm=0.0)


@pytest.fixture(scope="module")
def distiller() -> DistillingLM:
    """gpt2-tiny without its LayerNorms, taught by itself with them (built once: capture is the slow part)."""
    config = TrainConfig(model="gpt2-tiny", passes="remove-layernorm", seq_len=16, distill=True)
    built = build_graph(config)
    return DistillingLM(make_trainable(built.graph_module, config), built.before, WEIGHTS)


def _block_outputs_eager(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and each block's output, read with forward hooks on the eager model's blocks."""
    captured = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: captured.append(out)) for block in model.h]
    with torch.no_grad():
        logits = model(inputs)
    for hook in hooks:
        hook.remove()
    return logits, captured


def test_kl_and_hidden_terms_match_a_hand_computation(distiller):
    inputs = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, terms = distiller.terms(inputs)
    # by hand: the teacher is the eager model; the student is the same model with its LayerNorms as identity
    teacher = build_builtin("gpt2-tiny").eval()
    student = copy.deepcopy(teacher)
    for block in student.h:
        block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
    student.ln_f = nn.Identity()
    t_logits, t_blocks = _block_outputs_eager(teacher, inputs)
    s_logits, s_blocks = _block_outputs_eager(student, inputs)
    temperature = 2.0
    p_t = torch.softmax(t_logits / temperature, -1)
    log_p_s = torch.log_softmax(s_logits / temperature, -1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean() * temperature ** 2
    hidden = sum(((s - t) ** 2).sum() / (t ** 2).sum() for s, t in zip(s_blocks, t_blocks)) / len(t_blocks)
    assert kl.item() > 1e-3 and hidden.item() > 1e-3  # the student really differs from its teacher
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert terms["hidden"].item() == pytest.approx(hidden.item(), rel=1e-4)
    assert distiller.plan.hidden_layers == (0, 1) and distiller.plan.attention_layers == (0, 1)
    # the softmax survives remove-layernorm but its input changed: a small, positive attention term
    assert terms["attention"].item() > 0


def test_teacher_is_never_updated(distiller):
    distiller = copy.deepcopy(distiller)  # the hand computation above needs the start weights
    teacher = distiller.teacher
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    student_before = {name: p.detach().clone() for name, p in distiller.student.named_parameters()}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in distiller.parameters()}  # the optimizer cannot see them
    assert all(key.startswith("student.") for key in distiller.state_dict())  # nor the checkpoint
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-2)
    inputs = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        loss = distiller(inputs, inputs.roll(-1, 1))[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in teacher.named_parameters():
        assert torch.equal(param, before[name]), name
    moved = [name for name, p in distiller.student.named_parameters() if not torch.equal(p, student_before[name])]
    assert moved  # while the student did learn


FINAL_NORM = {"hf-gpt2-tiny": "model.transformer.ln_f", "llama-tiny": "model.model.norm",
              "pythia-tiny": "model.gpt_neox.final_layer_norm"}


@pytest.mark.parametrize("model", ["gpt2-tiny"] + [pytest.param(name, marks=pytest.mark.slow)  # 3-7 s each
                                   for name in ("hf-gpt2-tiny", "llama-tiny", "pythia-tiny")])
def test_layers_are_matched_from_the_graph(model, captured):
    """Each matched point is the residual stream after that block: checked against the eager model's own
    per-block hidden states (HF: output_hidden_states; the last one has the final norm applied)."""
    gm = captured(model)
    blocks = block_outputs(gm)
    builtin = build_builtin(model).eval()
    n_layer = builtin.config.n_layer if model == "gpt2-tiny" else builtin.config.num_hidden_layers
    assert list(blocks) == list(range(n_layer))
    view, own = tapped(gm, [blocks[layer].name for layer in range(n_layer)])
    inputs = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = view(inputs)
        taps = outputs[own:]
        if model == "gpt2-tiny":
            expected = _block_outputs_eager(builtin, inputs)[1]
        else:
            states = builtin.model(input_ids=inputs, output_hidden_states=True, use_cache=False).hidden_states
            final_norm = builtin.get_submodule(FINAL_NORM[model])
            expected = list(states[1:n_layer]) + [None]
            taps = list(taps[:-1]) + [final_norm(taps[-1])]
            expected[-1] = states[n_layer]
    for layer, (tap, reference) in enumerate(zip(taps, expected)):
        torch.testing.assert_close(tap, reference, rtol=1e-4, atol=1e-5, msg=f"{model} layer {layer}")
    # the rewritten graph keeps the same points (gpt2-tiny: checked by the command-line run below)
    if model != "gpt2-tiny":
        from aero_compile.pass_manager import PassManager

        student = PassManager.from_pipeline("all").run(gm).graph_module
        assert list(block_outputs(student)) == list(range(n_layer))


@pytest.mark.slow
def test_cli_distill_run_writes_the_model_and_the_terms_and_resumes_exactly(cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    flags = dict(passes="all", steps=8, batch_size=4, seq_len=32, corpus_max_bytes=300_000, eval_batches=1,
                 lr=3e-3, checkpoint_every=4, eval_every=4, distill_hidden=0.5, distill_attention=0.5)
    argv = ["train", "gpt2-tiny", "--distill", "--out", str(out), "--cache-dir", cache_dir, "--quiet", "--no-pictures"]
    argv += [item for key, value in flags.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    assert main(argv) == 0
    assert "KL to the teacher" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    distill = metrics["distill"]
    assert distill["weights"] == {"kl": 1.0, "temperature": 1.0, "hidden": 0.5, "attention": 0.5, "lm": 1.0}
    assert distill["matched"] == {"hidden_layers": [0, 1], "attention_layers": [0, 1]}
    assert set(distill["val_start"]) == set(distill["val_end"]) == {"kl", "hidden", "attention"}
    assert len(distill["history"]["kl"]) == 8
    assert [e["step"] for e in distill["evals"]] == [4] and set(distill["evals"][0]) == {"step", "kl", "hidden", "attention"}
    assert metrics["val_ppl_end"] < metrics["val_ppl_start"]
    logits = torch.export.load(str(out / "model.pt2")).module()(torch.randint(0, 256, (1, 8)))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 8, 256)
    # the same run stopped half-way and resumed reproduces its losses and terms
    common = dict(SMALL, **flags, cache_dir=cache_dir, export_pt2=False, distill=True)
    first = train(TrainConfig(**common, out_dir=str(tmp_path / "split"), stop_after=4))
    assert not first.finished
    second = train(TrainConfig(**common, out_dir=str(tmp_path / "split"), resume="auto"))
    assert second.losses[7] != second.losses[0]
    assert [second.losses[step] for step in range(8)] == pytest.approx(metrics["loss_history"], rel=1e-5, abs=1e-7)
    for term in ("kl", "hidden", "attention"):
        assert second.metrics["distill"]["history"][term] == pytest.approx(distill["history"][term],
                                                                          rel=1e-5, abs=1e-8), term
    assert second.metrics["distill"]["val_end"]["kl"] == pytest.approx(distill["val_end"]["kl"], rel=1e-5)
    # bad combinations: one line, exit 2
    assert main(["train", "gpt2-tiny", "--distill", "--init", "random", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "gpt2-tiny", "--lm-weight", "0.5", "--out", str(tmp_path / "y")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--init pretrained" in errors[0] and "with --distill" in errors[1]


def test_a_hugging_face_directory_brings_its_tokenizer(tmp_path):
    """auto: a directory's tokenizer.json, or its older files (vocab.json + merges.txt) converted by
    transformers; the same ids as the tokenizer they were saved from. No tokenizer: a BPE (the default)."""
    from aero_compile.training.tokenizer import resolve_tokenizer, train_bpe

    texts = ["def f(x):\n    return x + 1\n" * 50, "class A:\n    pass  # note\n" * 50]
    original = train_bpe(texts, 300)
    sample = "def g(y):\n    return y + 2  # café"
    old_style = tmp_path / "old-style"
    old_style.mkdir()
    original.model.save(str(old_style))  # vocab.json, merges.txt
    (old_style / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    modern = tmp_path / "modern"
    modern.mkdir()
    original.save(str(modern / "tokenizer.json"))
    for directory in (old_style, modern):
        tokenizer, info = resolve_tokenizer("auto", str(directory), 300, texts, "key", tmp_path / "cache")
        assert info["kind"] == "file", directory
        assert tokenizer.encode(sample).ids == original.encode(sample).ids, directory
    bare = tmp_path / "bare"
    bare.mkdir()
    _, info = resolve_tokenizer("auto", str(bare), 300, texts, "key", tmp_path / "cache")
    assert info["kind"] == "bpe"
