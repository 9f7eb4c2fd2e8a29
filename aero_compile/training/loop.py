"""``train(TrainConfig(...))``: rewrite a model, train it with AERO's entropy regularizer, write the results.

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast and torch.compile on CUDA,
DDP under torchrun. Outputs in ``out_dir``: model.pt2 (entropy outputs stripped), metrics.json,
entropy_heatmap.png, entropy_quarters.png, tokenizer.json and checkpoint.pt.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx as fx

from ..capturing import deep_copy_graph_module
from ..errors import AeroError
from ..fileio import write_json_atomic
from ..graph_info import graph_info
from ..passes.entropy_hooks import strip_entropy_outputs
from . import distributed
from .checkpoint import checkpoint_path, load_checkpoint, resolve_resume_path, save_checkpoint
from .config import TrainConfig
from .corpus import load_corpus
from .data import TokenData, train_batch, val_batches
from .distill import TERMS, DistillingLM, evaluate_terms
from .evaluate import Evaluation, autocast_context, entropy_stats, evaluate
from .model import build_graph, layers_of_softmaxes, make_trainable, parameter_groups
from .pictures import draw_heatmap, draw_quarters, quarter_shares
from .progress import ProgressReporter
from .regularizer import max_entropy
from .reparametrize import fold_reparametrizations
from .tokenizer import resolve_tokenizer


@dataclass
class TrainResult:
    """What ``train`` returns; ``metrics`` is also written as metrics.json."""

    metrics: dict
    graph_module: fx.GraphModule | None  # trained, entropy outputs stripped, on CPU (None if stopped early)
    entropies_before: list[list[float]]  # [layer][head], nats, on the validation windows
    entropies_after: list[list[float]] | None
    losses: dict[int, float] = field(default_factory=dict)  # step index -> training loss (CE + lambda * penalty)
    out_dir: Path | None = None
    finished: bool = True


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``config.warmup`` steps, then cosine decay to lr * min_lr_ratio at the last step."""
    warmup = config.warmup
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - floor)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) one training run as configured; see the module docstring for the outputs."""
    config.validate()
    placement = distributed.setup(config.device)
    try:
        return _Run(config, placement).execute()
    finally:
        distributed.teardown(placement)


class _Run:
    def __init__(self, config: TrainConfig, placement: distributed.Placement):
        self.config = config
        self.place = placement
        self.device = placement.device
        self.amp = config.amp == "bf16" or (config.amp == "auto" and self.device.type == "cuda")
        self.compile = config.compile == "on" or (config.compile == "auto" and self.device.type == "cuda")
        self.out = Path(config.out_dir)

    # -- setup -------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        config = self.config
        resume = resolve_resume_path(config.resume, config.out_dir) if config.resume is not None else None
        self.checkpoint = load_checkpoint(resume, config) if resume else None
        with distributed.main_first(self.place):
            self.built = build_graph(config)
            graph = self.built.graph_module
            model_vocab = graph_info(graph).vocab_size or 0
            corpus = load_corpus(config.data, val_fraction=config.val_fraction, max_bytes=config.corpus_max_bytes)
            self.tokenizer, self.tokenizer_info = resolve_tokenizer(
                config.tokenizer, config.model, model_vocab, corpus.train, corpus.key, config.cache_path)
            self.data = TokenData.build(corpus, self.tokenizer, config.cache_path)
            self.corpus_name = corpus.name
        self.data.check(config.seq_len)
        self.model = make_trainable(graph, config).to(self.device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config.weight_decay), lr=config.lr,
                                           betas=(config.beta1, config.beta2))
        if self.checkpoint:
            self.model.load_state_dict(self.checkpoint["model"])
            self.optimizer.load_state_dict(self.checkpoint["optimizer"])
        self.distiller = None
        if config.distill:  # the teacher is the captured model before the passes (the manager copied it)
            self.distiller = DistillingLM(self.model, self.built.before, config.distill_weights).to(self.device)
        self.step_module = self.distiller if self.distiller is not None else self.model
        if self.place.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids)
        if self.compile:
            self.step_module = torch.compile(self.step_module)
        self.val = val_batches(self.data.val, config.batch_size, config.seq_len, config.eval_batches)

    def _evaluate(self) -> Evaluation | None:
        return evaluate(self.model, self.val, self.device, self.amp) if self.place.is_main else None

    def _evaluate_terms(self) -> dict | None:
        """The distillation terms on the validation windows (None without --distill)."""
        if self.distiller is None or not self.place.is_main:
            return None
        return evaluate_terms(self.distiller, self.val, self.device, lambda: autocast_context(self.device, self.amp))

    # -- the loop ----------------------------------------------------------------------------------
    def execute(self) -> TrainResult:
        config = self.config
        self._prepare()
        state = self.checkpoint["state"] if self.checkpoint else None
        start = self.checkpoint["step"] if self.checkpoint else 0
        if state is None:
            before = self._evaluate()
            state = {"before": before.__dict__ if before else None, "losses": {}, "evals": [],
                     "tokens": 0, "train_seconds": 0.0, "distill_before": self._evaluate_terms(), "terms": {}}
        losses: dict[int, float] = {int(k): v for k, v in state["losses"].items()}
        terms: dict[int, list[float]] = {int(k): v for k, v in state.get("terms", {}).items()}
        stop = min(config.steps, config.stop_after or config.steps)
        if start >= stop == config.steps:  # a finished run: evaluate and write its outputs again
            return self._finish(state, losses, stop, terms)
        if start >= stop:
            raise AeroError(f"the checkpoint is at step {start}: nothing left to do for --steps {config.steps}"
                            + (f" --stop-after {config.stop_after}" if config.stop_after else ""))
        reporter = ProgressReporter(config.steps, start, enabled=self.place.is_main and not config.quiet,
                                    log_every=config.log_every)
        tokens_per_step = config.batch_size * config.seq_len * self.place.world_size
        session_tokens, session_seconds = 0, 0.0
        pending: list[tuple[int, torch.Tensor, torch.Tensor, list, dict]] = []
        try:
            tick = time.perf_counter()
            for step in range(start, stop):
                lr = lr_at(step, config)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                inputs, targets = train_batch(self.data.train, config.batch_size, config.seq_len, step=step,
                                              seed=config.seed, rank=self.place.rank)
                inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
                with autocast_context(self.device, self.amp):
                    loss, ce, penalty, entropies, *distill_terms = self.step_module(inputs, targets)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                pending.append((step, loss.detach(), penalty, entropies, distill_terms[0] if distill_terms else {}))
                done = step + 1
                session_tokens += tokens_per_step
                log_now = done % config.log_every == 0 or done == stop
                save_now = (config.checkpoint_every and done % config.checkpoint_every == 0) or done == stop
                eval_now = config.eval_every and done % config.eval_every == 0 and done != config.steps
                if not (log_now or save_now or eval_now):
                    continue
                # Reading values synchronizes with the device: do it only at these points.
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                session_seconds += time.perf_counter() - tick
                for index, loss_value, _, _, step_terms in pending:
                    losses[index] = loss_value.item()
                    if step_terms:
                        terms[index] = [step_terms[name].item() for name in TERMS]
                _, _, last_penalty, last_entropies, _ = pending[-1]
                stats = self._stats(losses, pending, last_penalty, last_entropies, lr, session_tokens, session_seconds)
                if self.distiller is not None:
                    # the loss is the teacher's terms: show the perplexity of the data beside it
                    stats["kl"] = sum(terms[index][0] for index, *_ in pending) / len(pending)
                    ce = sum(step_terms["ce"].item() for *_, step_terms in pending) / len(pending)
                    stats["ppl"] = math.exp(min(ce, 50.0))
                pending.clear()
                reporter.update(done, stats)
                if eval_now and self.place.is_main:
                    evaluation = self._evaluate()
                    record = {"step": done, "val_loss": evaluation.loss, "val_ppl": evaluation.ppl}
                    if self.distiller is not None:
                        record["distill"] = self._evaluate_terms()
                    state["evals"].append(record)
                    reporter.message(f"step {done}: val ppl {evaluation.ppl:.2f}")
                if save_now:
                    state.update(losses=losses, terms=terms, tokens=state["tokens"] + session_tokens,
                                 train_seconds=state["train_seconds"] + session_seconds)
                    session_tokens, session_seconds = 0, 0.0
                    if self.place.is_main:
                        save_checkpoint(checkpoint_path(config), model=self.model, optimizer=self.optimizer,
                                        step=done, config=config, state=state)
                    self.place.barrier()
                tick = time.perf_counter()
        finally:
            reporter.close()
        return self._finish(state, losses, stop, terms)

    def _stats(self, losses, pending, penalty, entropies, lr, tokens, seconds) -> dict:
        recent = [losses[index] for index, *_ in pending]
        mean_loss = sum(recent) / len(recent)
        h = entropy_stats(entropies, self.config.seq_len)
        return {"loss": mean_loss, "ppl": math.exp(min(mean_loss, 50.0)), "h_mean": h["mean"], "h_min": h["min"],
                "h_max": h["max"], "penalty": penalty.item(), "lr": lr, "tok_s": tokens / seconds if seconds else 0.0}

    # -- results -----------------------------------------------------------------------------------
    def _finish(self, state: dict, losses: dict[int, float], stop: int, terms: dict[int, list[float]]) -> TrainResult:
        config = self.config
        before = state["before"]
        finished = stop >= config.steps
        if not self.place.is_main:
            return TrainResult(metrics={}, graph_module=None, entropies_before=[], entropies_after=None,
                               losses=losses, out_dir=self.out, finished=finished)
        after = self._evaluate() if finished else None
        metrics = self._metrics(state, losses, before, after, stop)
        if self.distiller is not None:
            metrics["distill"] = self._distill_metrics(state, terms, finished)
        graph = None
        if finished:
            graph = deep_copy_graph_module(strip_entropy_outputs(self.model.graph)).to("cpu").float()
            if fold_reparametrizations(graph):  # weight/spectral norm back into plain weights: no cost at inference
                metrics["reparametrization_fold_rel_diff"] = self._check_fold(graph)
            metrics["outputs"] = self._write_outputs(graph, before, after)
        write_json_atomic(self.out / "metrics.json", metrics)
        return TrainResult(metrics=metrics, graph_module=graph, entropies_before=before["entropies"],
                           entropies_after=after.entropies if after else None, losses=losses, out_dir=self.out,
                           finished=finished)

    def _metrics(self, state, losses, before: dict, after: Evaluation | None, stop: int) -> dict:
        config = self.config
        seconds = state["train_seconds"]
        e_max = max_entropy(config.seq_len)
        ordered = [losses[k] for k in sorted(losses)]
        tail = ordered[-10:]
        metrics = {
            "model": config.model, "passes": config.passes, "pipeline": self.built.report.pipeline,
            "init": config.init, "entropy_reg": config.entropy_reg,
            "lambda": config.entropy_lambda if config.entropy_reg else 0.0, "gamma": config.entropy_gamma,
            "temperature": config.temperature, "steps": stop, "steps_planned": config.steps,
            "batch_size": config.batch_size, "seq_len": config.seq_len, "world_size": self.place.world_size,
            "device": str(self.device), "amp": "bf16" if self.amp else "off", "compiled": self.compile,
            "tokens_seen": state["tokens"], "train_seconds": round(seconds, 3),
            "tokens_per_s": state["tokens"] / seconds if seconds else None,
            "val_loss_start": before["loss"], "val_ppl_start": before["ppl"],
            "val_loss_end": after.loss if after else None, "val_ppl_end": after.ppl if after else None,
            "train_loss_first": ordered[0] if ordered else None,
            "train_loss_last10": sum(tail) / len(tail) if tail else None,
            # Unweighted penalty (mean over layers and heads of delta^2 beyond the band) on the validation
            # windows; with the regularizer off, theta stays at its start value.
            "entropy_penalty_start": before["penalty"],
            "entropy_penalty_final": after.penalty if after else None,
            "e_max": e_max, "entropy_layers": layers_of_softmaxes(self.model.graph),
            "entropy_before": before["entropies"], "entropy_after": after.entropies if after else None,
            "entropy_quarters_before": quarter_shares(before["entropies"], e_max),
            "entropy_quarters_after": quarter_shares(after.entropies, e_max) if after else None,
            "thetas": [t.detach().cpu().tolist() for t in self.model.regularizer.thetas],
            "evals": state["evals"],
            "reparametrized": self.built.reparametrized,
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "tokenizer": self.tokenizer_info,
            "corpus": {"name": self.corpus_name, "train_tokens": self.data.train.numel(),
                       "val_tokens": self.data.val.numel(), "val_tokens_used": before["tokens"]},
            "loss_history": ordered,
            "finished": stop >= config.steps,
        }
        return metrics

    def _check_fold(self, folded: fx.GraphModule) -> float:
        """The folded graph computes the training graph's logits (evaluation mode): max |diff| / max |logits|."""
        inputs = self.val[0][0][:2].to("cpu")
        training = deep_copy_graph_module(strip_entropy_outputs(self.model.graph)).to("cpu").float()
        with torch.no_grad():
            reference, logits = training(inputs), folded(inputs)
        diff = ((logits - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()
        if not diff <= 1e-5:
            raise AeroError(f"folding the weight reparametrizations changed the logits by {diff:.3g} (relative): "
                            "the exported model would not be the trained one")
        return diff

    def _distill_metrics(self, state: dict, terms: dict[int, list[float]], finished: bool) -> dict:
        """Weights, matched layers, the unweighted terms on the validation windows at the start, at each
        eval and at the end, and their per-step training history."""
        ordered = [terms[k] for k in sorted(terms)]
        return {"weights": self.config.distill_weights.__dict__, "matched": self.distiller.plan.to_dict(),
                "val_start": state["distill_before"], "val_end": self._evaluate_terms() if finished else None,
                "evals": [{"step": e["step"], **e["distill"]} for e in state["evals"] if "distill" in e],
                "history": {name: [row[i] for row in ordered] for i, name in enumerate(TERMS)}}

    def _write_outputs(self, graph: fx.GraphModule, before: dict, after: Evaluation) -> dict:
        from ..targets.pt2 import save_pt2

        config, out = self.config, self.out
        outputs = {}
        if config.export_pt2:
            outputs["pt2"] = save_pt2(graph, out / "model.pt2")["path"]
        tokenizer_out = out / "tokenizer.json"
        if Path(self.tokenizer_info["path"]).resolve() != tokenizer_out.resolve():
            from ..fileio import atomic_path

            with atomic_path(tokenizer_out) as tmp:
                shutil.copyfile(self.tokenizer_info["path"], tmp)
        outputs["tokenizer"] = str(tokenizer_out)
        if config.pictures and before["entropies"]:  # no pictures for a graph with no softmax left
            e_max = max_entropy(config.seq_len)
            title = f"{config.model} --passes {config.passes}" + (" + entropy reg" if config.entropy_reg else "")
            layers = layers_of_softmaxes(self.model.graph)
            draw_heatmap(before["entropies"], after.entropies, layers, e_max, out / "entropy_heatmap.png", title)
            draw_quarters(before["entropies"], after.entropies, e_max, out / "entropy_quarters.png", title)
            outputs["pictures"] = [str(out / "entropy_heatmap.png"), str(out / "entropy_quarters.png")]
        outputs["checkpoint"] = str(checkpoint_path(config))
        outputs["metrics"] = str(out / "metrics.json")
        return outputs
