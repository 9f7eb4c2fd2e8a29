"""Gradual conversion (train --gradual): blends start as the model, end as the pipeline, export is the pipeline's graph."""

import json

import pytest
import torch

from aero_compile.capturing import capture, deep_copy_graph_module
from aero_compile.cli import main
from aero_compile.loader import load_model
from aero_compile.pass_manager import PassManager
from aero_compile.report import summarize_graph
from aero_compile.training import TrainConfig, train
from aero_compile.training.gradual import (GRADUAL_KEY, apply_schedule, build_gradual, finalize, gradual_sites,
                                           schedule)

PIPELINES = ["all", "all,softmax-to-quad{norm=length}", "remove-layernorm", "gelu-to-relu,softmax-to-relu{norm=sum}",
             "remove-layernorm{replace=weight-norm},gelu-to-identity"]
STEPS = 12


def _logits(gm, ids):
    with torch.no_grad():
        out = gm(ids)
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


@pytest.fixture(scope="module")
def tiny():
    return capture(load_model("gpt2-tiny"), name="gpt2-tiny")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_blends_start_as_the_model_and_finalize_to_the_pipeline(tiny, pipeline):
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 16))
    reference = PassManager.from_pipeline(pipeline).run(tiny).graph_module
    built, deferred = build_gradual(tiny, pipeline)
    gm = built.graph_module
    assert gradual_sites(gm)
    apply_schedule(gm, 0, STEPS)  # every blend at 0: the model as it was (scale-ffn starts as identity)
    assert torch.allclose(_logits(gm, ids), _logits(tiny, ids), atol=1e-5)
    apply_schedule(gm, STEPS, STEPS)  # every blend at 1: the pipeline's computation
    at_end = _logits(gm, ids)
    assert torch.allclose(at_end, _logits(reference, ids), atol=1e-4, rtol=1e-4)
    exported = finalize(deep_copy_graph_module(gm), deferred)
    assert not gradual_sites(exported)
    assert summarize_graph(exported, 16).op_counts == summarize_graph(reference, 16).op_counts
    assert torch.allclose(_logits(exported, ids), at_end, atol=1e-4, rtol=1e-4)
    assert not [name for name, _ in exported.named_buffers() if name.startswith("gradual_")]


def test_norms_freeze_first_then_go_layer_by_layer_final_norm_last(tiny):
    gm = build_gradual(tiny, "remove-layernorm")[0].graph_module
    plan = schedule(gm, 100)
    norms = {node.meta[GRADUAL_KEY]["layer"]: window for node, window in plan.items()}
    assert set(norms) == {0, 1, None}  # two blocks' norms (2 each, same window per layer) and the final one
    # freeze over the first quarter; blocks share half the rest, the final norm (tied head) gets the other half
    assert norms[0][1] == 25 and norms[0][2:] == (25, 43.75) and norms[1][2:] == (43.75, 62.5)
    assert norms[None][2:] == (62.5, 100)
    # mid-way through layer 1: layer 0 gone, layer 1 half, final norm untouched, every divisor frozen
    apply_schedule(gm, 53, 100)
    states = {n.meta[GRADUAL_KEY]["layer"]: getattr(gm, n.args[-1].target).tolist()[:2] for n in gradual_sites(gm)}
    assert states[0] == [1.0, 1.0] and states[1] == pytest.approx([1.0, 0.4933], abs=1e-4) and states[None] == [1.0, 0.0]


def test_frozen_block_norms_fold_into_their_linears_exactly_and_the_tied_head_stays_tied(tiny):
    gm = build_gradual(tiny, "remove-layernorm")[0].graph_module
    ids = torch.randint(0, 256, (2, 16))
    apply_schedule(gm, 0, 100)
    gm(ids)  # a training forward: the running std
    unfolded = deep_copy_graph_module(gm)
    for node in gradual_sites(unfolded):  # frozen, nothing removed yet, not folded
        getattr(unfolded, node.args[-1].target).copy_(torch.tensor([1.0, 0.0, 0.0]))
    from aero_compile.ops import attr_value

    def read(module, target):  # what the graph reads under that name (the head is tied: the same tensor)
        return attr_value(module, next(n for n in module.graph.nodes if n.op == "get_attr" and n.target == target))

    head = read(gm, "lm_head.weight").clone()
    apply_schedule(gm, 25, 100)  # the freeze ends: block norms fold
    folded = {n.meta[GRADUAL_KEY]["layer"]: getattr(gm, n.args[-1].target)[2].item() for n in gradual_sites(gm)}
    assert folded == {0: 1.0, 1: 1.0, None: 0.0}  # the final norm feeds the tied head: not folded
    assert torch.allclose(_logits(gm, ids), _logits(unfolded, ids), atol=1e-4, rtol=1e-4)
    assert not torch.equal(read(gm, "h.0.attn.c_attn.weight"), read(unfolded, "h.0.attn.c_attn.weight"))
    assert torch.equal(read(gm, "lm_head.weight"), head)  # the head (tied to the embedding) is untouched


def test_the_running_std_is_tracked_while_training_and_frozen_after(tiny):
    gm = build_gradual(tiny, "remove-layernorm")[0].graph_module
    sigma_names = [n.args[4].target for n in gradual_sites(gm)]
    ids = torch.randint(0, 256, (2, 16))
    apply_schedule(gm, 0, 100)
    gm(ids)  # grad on: observed
    tracked = [getattr(gm, name).item() for name in sigma_names]
    assert all(value > 0 for value in tracked)
    apply_schedule(gm, 30, 100)  # frozen
    gm(torch.randint(0, 256, (2, 16)))
    assert [getattr(gm, name).item() for name in sigma_names] == tracked


# -- end to end: a tiny teacher, converted gradually ------------------------------------------------
SMALL = dict(corpus_max_bytes=120_000, batch_size=4, seq_len=32, eval_batches=2, quiet=True, checkpoint_every=0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("teacher")
    train(TrainConfig(model="gpt2-tiny", passes="none", init="random", steps=30, lr=3e-3, out_dir=str(out),
                      cache_dir=cache, pictures=False, **SMALL))
    return out, cache


@pytest.fixture(scope="module")
def gradual_run(teacher, tmp_path_factory):
    teacher_dir, cache = teacher
    out = tmp_path_factory.mktemp("gradual")
    config = TrainConfig(model=str(teacher_dir / "model.pt2"), tokenizer=str(teacher_dir / "tokenizer.json"),
                         passes="all,softmax-to-quad{norm=length}", gradual=8, steps=10, lr=1e-3, eval_every=1,
                         out_dir=str(out), cache_dir=cache, **SMALL)
    return train(config)


@pytest.mark.slow
def test_exported_model_is_the_pipelines_graph_with_the_trained_weights(teacher, gradual_run, tmp_path):
    teacher_dir, _ = teacher
    pipeline = gradual_run.metrics["passes"]
    # what `aero-compile TEACHER.pt2 --passes P -o one-shot.pt2` writes, read back as a user reads it
    assert main([str(teacher_dir / "model.pt2"), "--passes", pipeline, "-o", str(tmp_path / "one-shot.pt2"),
                 "--no-cost"]) == 0
    one_shot = torch.export.load(str(tmp_path / "one-shot.pt2")).module()
    exported = torch.export.load(str(gradual_run.out_dir / "model.pt2")).module()
    counts = summarize_graph(exported, 16).op_counts
    assert counts == summarize_graph(one_shot, 16).op_counts
    assert "layernorm" not in counts and "gelu" not in counts and "softmax" not in counts, counts
    ids = torch.randint(0, 256, (2, 16))
    assert torch.allclose(_logits(exported, ids), _logits(gradual_run.graph_module, ids), atol=1e-4)
    assert not torch.allclose(_logits(exported, ids), _logits(one_shot, ids), atol=1e-3)  # trained, not the start
    metrics = gradual_run.metrics
    assert metrics["val_ppl_export"] == pytest.approx(metrics["val_ppl_end"], rel=1e-3)
    assert metrics["gradual"] == {"steps": 8, "blended": ["remove-layernorm", "gelu-to-identity", "softmax-to-quad"],
                                  "applied_at_step_0": ["canonicalize", "scale-ffn"], "at_export": ["fold-linear"]}


@pytest.mark.slow
def test_validation_ppl_never_rises_above_twice_the_start(teacher, gradual_run):
    metrics = gradual_run.metrics
    trajectory = metrics["ppl_trajectory"]
    assert [p["step"] for p in trajectory] == list(range(0, 11))
    assert trajectory[0]["mix"] == 0.0 and trajectory[-1]["mix"] == 1.0
    teacher_ppl = json.loads((teacher[0] / "metrics.json").read_text())["val_ppl_end"]
    assert metrics["val_ppl_start"] == pytest.approx(teacher_ppl, rel=1e-4)  # start: the unconverted model
    assert max(p["val_ppl"] for p in trajectory) <= 2 * metrics["val_ppl_start"], trajectory
    assert (gradual_run.out_dir / "ppl_trajectory.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--passes", "all", "--gradual", "20", "--steps", "10"], "--gradual 20 is more than --steps 10"),
    (["--passes", "all", "--gradual", "-1"], "--gradual must be 0 or a positive"),
    (["--passes", "canonicalize,scale-ffn", "--gradual", "5", "--steps", "5"], "no pass of"),
])
def test_bad_gradual_is_refused_in_one_line(argv, message, tmp_path, capsys):
    code = main(["train", "gpt2-tiny", "--out", str(tmp_path / "o"), "--corpus-max-bytes", "50000", "--quiet",
                 "--cache-dir", str(tmp_path / "c"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_gradual_is_part_of_the_runs_identity():
    assert "gradual" in TrainConfig.RUN_IDENTITY


def test_weight_norm_replacement_still_reparametrizes_the_linears_reading_a_blended_norm(tiny):
    from aero_compile.training.reparametrize import reparametrize

    gm = build_gradual(tiny, "remove-layernorm{replace=weight-norm}")[0].graph_module
    done = reparametrize(gm)
    assert sorted(d["weight"] for d in done if d["mode"] == "weight-norm") == [
        "h.0.attn.c_attn.weight", "h.0.mlp.c_fc.weight", "h.1.attn.c_attn.weight", "h.1.mlp.c_fc.weight"]
