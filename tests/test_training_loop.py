"""Training runs end to end on CPU: the loss falls, a resumed run continues exactly, outputs are usable."""

import json

import pytest
import torch

from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.training import TrainConfig, entropy_penalty, lr_at, train

# Small and fast: the tiny GPT (vocab 256, so the BPE is the byte alphabet), 300 KB of stdlib sources.
SMALL = dict(model="gpt2-tiny", corpus_max_bytes=300_000, batch_size=8, seq_len=64, eval_batches=4,
             quiet=True, lr=3e-3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("aero-cache"))


@pytest.fixture(scope="module")
def short_run(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-all")
    config = TrainConfig(**SMALL, passes="all", steps=40, out_dir=str(out), cache_dir=cache_dir,
                         temperature="head", init="random")
    return train(config)


@pytest.mark.slow  # trains for ~30 s
def test_loss_and_validation_perplexity_fall(short_run):
    metrics = short_run.metrics
    first = sum(metrics["loss_history"][:5]) / 5
    last = sum(metrics["loss_history"][-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert metrics["val_ppl_end"] < 0.6 * metrics["val_ppl_start"]
    assert metrics["steps"] == 40 and metrics["tokens_per_s"] > 0
    assert len(metrics["entropy_after"]) == 2
    # the reported penalty is the penalty of the reported entropies under the learned thresholds
    recomputed = entropy_penalty([torch.tensor(e) for e in metrics["entropy_after"]],
                                 [torch.tensor(t) for t in metrics["thetas"]], seq_len=metrics["seq_len"],
                                 gamma=metrics["gamma"]).item()
    assert metrics["entropy_penalty_final"] == pytest.approx(recomputed, rel=1e-5, abs=1e-9)


@pytest.mark.slow  # trains for ~30 s
def test_outputs_are_written_and_usable(short_run):
    out = short_run.out_dir
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("val_ppl_start", "val_ppl_end", "steps", "tokens_per_s", "entropy_penalty_final"):
        assert on_disk[key] == short_run.metrics[key]
    for name in ("entropy_heatmap.png", "entropy_quarters.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = torch.export.load(str(out / "model.pt2")).module()
    inputs = torch.randint(0, 256, (2, 16))
    logits = loaded(inputs)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 16, 256)  # entropy outputs stripped
    assert torch.allclose(logits, short_run.graph_module(inputs), atol=1e-4)
    # the trained temperatures are part of the exported model
    assert any("temperature" in name for name, _ in short_run.graph_module.named_parameters())


@pytest.mark.slow  # trains for ~30 s
def test_resume_continues_the_same_run(cache_dir, tmp_path):
    common = dict(SMALL, passes="all", steps=12, cache_dir=cache_dir, pictures=False, export_pt2=False,
                  checkpoint_every=6, eval_batches=1)
    whole = train(TrainConfig(**common, out_dir=str(tmp_path / "whole")))
    first = train(TrainConfig(**common, out_dir=str(tmp_path / "split"), stop_after=6))
    assert not first.finished and sorted(first.losses) == list(range(6))
    second = train(TrainConfig(**common, out_dir=str(tmp_path / "split"), resume="auto"))
    assert second.finished and sorted(second.losses) == list(range(12))
    for step in range(12):
        assert second.losses[step] == pytest.approx(whole.losses[step], rel=1e-5, abs=1e-6), step
    assert second.metrics["val_ppl_end"] == pytest.approx(whole.metrics["val_ppl_end"], rel=1e-5)
    # resuming a finished run trains nothing and writes its outputs again
    again = train(TrainConfig(**common, out_dir=str(tmp_path / "split"), resume="auto"))
    assert again.finished and again.losses == second.losses
    assert again.metrics["val_ppl_end"] == pytest.approx(second.metrics["val_ppl_end"], rel=1e-6)
    # a checkpoint of another run is refused with the differing flag named
    with pytest.raises(AeroError, match="temperature"):
        train(TrainConfig(**common, out_dir=str(tmp_path / "split"), resume="auto", temperature="head"))


def test_schedule_warms_up_then_decays():
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    rates = [lr_at(step, config) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["train", "gpt2-tiny", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert main(["train", "gpt2{n_layer=1,n_head=2,n_embd=16,vocab_size=100}", "--out", str(tmp_path),
                 "--steps", "2", "--corpus-max-bytes", "20000", "--cache-dir", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "--steps must be a positive integer" in lines[0]
    assert "at least 256" in lines[1] and "vocab_size=256" in lines[1]
