"""Training throughput: the AERO-regularized rewritten model vs a plain PyTorch loop over the same model.

    python benchmarks/train_overhead.py                       # CPU, tiny GPT-2, --passes all
    python benchmarks/train_overhead.py --device cuda --batch-size 64

Both loops run the same rewritten graph with the same weights, batches, AdamW, clipping, autocast and
(on CUDA) torch.compile. "plain" calls the graph without entropy outputs and minimizes cross-entropy;
"regularized" calls the entropy-hooked graph and adds lambda * the entropy penalty (learnable theta,
optional temperature). The two alternate in rounds so that a shared machine's load hits both alike.
A last run of ``train()`` itself (progress, logging included) gives the end-to-end figure. Prints one
summary line; --json writes the figures.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aero_compile.capturing import deep_copy_graph_module
from aero_compile.graph_info import graph_info
from aero_compile.passes.entropy_hooks import strip_entropy_outputs
from aero_compile.training import TrainConfig, train
from aero_compile.training.corpus import load_corpus
from aero_compile.training.data import TokenData, train_batch
from aero_compile.training.distributed import setup
from aero_compile.training.evaluate import autocast_context
from aero_compile.training.model import build_graph, make_trainable, parameter_groups
from aero_compile.training.tokenizer import resolve_tokenizer

DEFAULT_MODEL = "gpt2{n_layer=4,n_embd=128,n_head=4,vocab_size=4096}"


class _Plain(torch.nn.Module):
    """The loop a user would write without aero-compile's training: logits -> cross-entropy."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, inputs, targets):
        logits = self.graph(inputs)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _regularized_loss(model):
    def step(inputs, targets):
        return model(inputs, targets)[0]
    return step


def _timed_steps(loss_fn, params, optimizer, data, config, device, amp, first_step, count):
    """Run ``count`` optimizer steps; seconds taken (device-synchronized)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for step in range(first_step, first_step + count):
        inputs, targets = train_batch(data.train, config.batch_size, config.seq_len, step=step, seed=config.seed)
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast_context(device, amp):
            loss = loss_fn(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--passes", default="all")
    parser.add_argument("--temperature", default="none", choices=("none", "head", "position"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop (split into rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first (compilation)")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--cache-dir")
    parser.add_argument("--skip-train", action="store_true", help="skip the end-to-end train() run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    config = TrainConfig(model=args.model, passes=args.passes, temperature=args.temperature, device=args.device,
                         batch_size=args.batch_size, seq_len=args.seq_len, cache_dir=args.cache_dir,
                         compile=args.compile, quiet=True).validate()
    device = setup(config.device).device
    amp = device.type == "cuda"
    compiled = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    graph = build_graph(config).graph_module
    corpus = load_corpus(None)
    tokenizer, _ = resolve_tokenizer("auto", config.model, graph_info(graph).vocab_size, corpus.train,
                                     corpus.key, config.cache_path)
    data = TokenData.build(corpus, tokenizer, config.cache_path)

    regularized = make_trainable(deep_copy_graph_module(graph), config).to(device)
    plain = _Plain(deep_copy_graph_module(strip_entropy_outputs(graph))).to(device)
    loops = {}
    for name, module, loss_fn in (("plain", plain, plain), ("regularized", regularized, _regularized_loss(regularized))):
        optimizer = torch.optim.AdamW(parameter_groups(regularized, 0.1) if name == "regularized" else
                                      [p for p in module.parameters() if p.requires_grad], lr=1e-3)
        fn = torch.compile(loss_fn) if compiled else loss_fn
        params = [p for p in module.parameters() if p.requires_grad]
        _timed_steps(fn, params, optimizer, data, config, device, amp, 0, args.warmup)
        loops[name] = (fn, params, optimizer)
    seconds = {name: 0.0 for name in loops}
    per_round = max(1, args.steps // args.rounds)
    for index in range(args.rounds):
        for name, (fn, params, optimizer) in loops.items():
            seconds[name] += _timed_steps(fn, params, optimizer, data, config, device, amp,
                                          args.warmup + index * per_round, per_round)
    tokens = per_round * args.rounds * config.batch_size * config.seq_len
    figures = {name: tokens / seconds[name] for name in loops}
    result = {"device": str(device), "model": config.model, "passes": config.passes, "temperature": config.temperature,
              "batch_size": config.batch_size, "seq_len": config.seq_len, "compiled": compiled, "amp": amp,
              "timed_steps": per_round * args.rounds, "plain_tokens_per_s": figures["plain"],
              "regularized_tokens_per_s": figures["regularized"],
              "overhead_ratio": figures["plain"] / figures["regularized"]}
    line = (f"train-overhead {device} {config.model} --passes {config.passes} B={config.batch_size} T={config.seq_len}"
            f"{' compiled' if compiled else ''}: plain {figures['plain']:,.0f} tok/s, regularized "
            f"{figures['regularized']:,.0f} tok/s, overhead x{result['overhead_ratio']:.3f}")
    if not args.skip_train:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            run = train(TrainConfig(**{**config.to_dict(), "out_dir": out, "steps": args.warmup + args.steps,
                                       "eval_batches": 1, "pictures": False, "export_pt2": False,
                                       "checkpoint_every": 0}))
        result["train_tokens_per_s"] = run.metrics["tokens_per_s"]
        line += f"; train() end to end {run.metrics['tokens_per_s']:,.0f} tok/s (incl. warm-up)"
    print(line)
    if args.json:
        from aero_compile.fileio import write_json_atomic

        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
