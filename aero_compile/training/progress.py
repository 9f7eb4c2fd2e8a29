"""Progress of a run: a rich progress bar on a terminal, plain lines every ``log_every`` steps otherwise."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def format_stats(stats: dict) -> str:
    """'loss 3.21 [kl 0.152] ppl 24.8 H 0.52 [0.10..0.91] pen 1.2e-01 lr 9.0e-04 4,100 tok/s' (H: entropy / E_max)."""
    kl = f"kl {stats['kl']:.3f} " if "kl" in stats else ""
    return (f"loss {stats['loss']:.3f} {kl}ppl {stats['ppl']:.1f} H {stats['h_mean']:.2f} "
            f"[{stats['h_min']:.2f}..{stats['h_max']:.2f}] pen {stats['penalty']:.2e} "
            f"lr {stats['lr']:.1e} {stats['tok_s']:,.0f} tok/s")


class ProgressReporter:
    """``update(step, stats)`` after each logged step; ``message(text)`` for evals and checkpoints."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True, log_every: int = 10, label: str = "train"):
        self.enabled = enabled
        self.log_every = log_every
        self.console = Console(file=sys.stderr)
        if not self.console.is_terminal:  # a log file: one record per line, never wrapped at 80 columns
            self.console = Console(file=sys.stderr, width=1000)
        self.live = enabled and self.console.is_terminal
        self.progress = None
        if self.live:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=False)
            self.task = self.progress.add_task(label, total=total, completed=initial, stats="")
            self.progress.start()
        self.total = total

    def update(self, step: int, stats: dict | None) -> None:
        if not self.enabled:
            return
        if self.live:
            fields = {"stats": format_stats(stats)} if stats else {}
            self.progress.update(self.task, completed=step, **fields)
        elif stats is not None:
            self.console.print(f"step {step}/{self.total} {format_stats(stats)}", highlight=False)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
