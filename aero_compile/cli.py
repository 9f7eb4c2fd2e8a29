"""The ``aero-compile`` command.

    aero-compile                                  # built-in GPT-2 small, --passes all, table
    aero-compile model.pt --arch gpt2 --passes all -o model.aero.pt2 --report-json report.json
    aero-compile ./hf-checkpoint --passes remove-layernorm,gelu-to-identity
    aero-compile <subcommand> ...                 # see SUBCOMMANDS

Errors in the input print one line on stderr and exit with status 2; nothing is half-written: every
output path is checked before any work, outputs are staged and moved into place together at the end,
and Ctrl-C at any moment (even during ``import torch``) prints one line and exits with status 130.
"""

from __future__ import annotations

import signal
import threading


# Every Ctrl-C is recorded here as well as raised: torch can turn a KeyboardInterrupt raised inside its C++
# code into a RuntimeError (which a pass then reports as its own failure), so main() asks this list, not
# the exception type, whether the run was interrupted.
_INTERRUPTS: list[int] = []


def _interrupt(signum, frame) -> None:
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def _handle_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt (which main() turns into one line), even where SIGINT was ignored."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)


_handle_interrupts()  # before anything heavy is imported


def _import_torch_uninterrupted() -> None:
    """Import torch with Ctrl-C held back until the import is done, then honoured.

    A KeyboardInterrupt raised inside torch's extension-module initialization leaves it half-built, and
    the interpreter can then crash (SIGSEGV) instead of printing our one line; the import takes a second
    or two, so the interrupt is only delayed that long.
    """
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        _INTERRUPTS.extend(pending)
        raise KeyboardInterrupt

import argparse  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from .errors import AeroError, describe  # noqa: E402
from .network import add_network_arguments, check_network_arguments  # noqa: E402
from .outputs import OutputPlan  # noqa: E402
from .pass_options import MAX_CALIBRATION_SEQUENCES  # noqa: E402

DEFAULT_MODEL = "gpt2"
DEFAULT_PIPELINE = "all"

# Subcommand -> "module:function"; each function takes argv (the words after the subcommand).
SUBCOMMANDS: dict[str, str] = {
    "train": "aero_compile.training.cli:train_command",
    "calibrate": "aero_compile.targets:calibrate_command",  # engines register in targets.CALIBRATORS
    "keys": "aero_compile.targets.private.keys:keys_command",
    "link-check": "aero_compile.targets.private.link.check:link_check_command",
}

# Feature modules that extend the main command. Each defines ``add_arguments(parser)`` and
# ``apply(args, result)``: the latter runs after the passes (``result`` is the PipelineResult), may fill
# sections of ``result.report`` (a report.PipelineReport) and print its own section after the summary table.
# Applied in this order: the predicted cost prints before the measured private run. Optional hooks, each
# called for every extension that defines it:
#   check(args)            before anything runs (no model loaded): every option checkable without a graph;
#   check_graph(args, gm)  right after capture, before any pass: what needs the graph (e.g. its context);
#   emit_options(args)     keyword options for the emitter of -o, checked before any work;
#   finish(args, result)   after every extension's apply (a last line under all the tables);
#   OUTPUT_OPTIONS         {dest: flag} of files the extension writes: checked before any work, staged.
EXTENSIONS: list[str] = [
    "aero_compile.cost.cli_extension",
    "aero_compile.targets.private.options",  # --run-private and every registered engine (private.engines)
    "aero_compile.targets.onnx.cli_extension",
    "aero_compile.generation.cli_extension",
]


def _extensions():
    return [importlib.import_module(name) for name in EXTENSIONS]


def _emit_formats() -> list[str]:
    from .targets import EMITTERS

    return sorted(suffix.lstrip(".") for suffix in EMITTERS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aero-compile",
        description="Rewrite a decoder-only LM to be cheap under private inference, and report what it saves.",
        epilog="Subcommands: " + (", ".join(SUBCOMMANDS) if SUBCOMMANDS else "none") + " (aero-compile SUB --help).",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help="built-in name (e.g. gpt2, gpt2-tiny, llama-tiny, 'gpt2{n_layer=6}'), a Hugging Face "
                             "directory, a .pt2 file or a .pt/.pth state dict (default: gpt2)")
    parser.add_argument("--passes", default=DEFAULT_PIPELINE,
                        help="pipeline: 'all', 'none', or passes like 'remove-layernorm,prune-ffn{last=6}' (default: all)")
    parser.add_argument("--arch", help="architecture of a state dict: a built-in name (e.g. gpt2)")
    parser.add_argument("--config", help="architecture of a state dict: a config.json (Hugging Face or ours)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow loading a pickled whole module (this runs code from the file)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length the report analyses (default 128)")
    parser.add_argument("-o", "--output", help="write the rewritten model (.pt2, .onnx; verified before it appears)")
    parser.add_argument("--emit", choices=_emit_formats(), help="format of -o (default: from its suffix)")
    parser.add_argument("--report-json", help="write the report as JSON")
    parser.add_argument("--no-verify", action="store_true", help="skip the forward runs and checks between passes")
    parser.add_argument("--calibrate", type=int, metavar="N",
                        help="sequences a calibrating pass (softmax-no-max, linearize-heads) measures, unless its options say")
    parser.add_argument("--calibrate-tokens", choices=("random", "corpus"),
                        help="what they are: random token ids, or the standard-library corpus in the model's tokenizer")
    parser.add_argument("--list-passes", action="store_true", help="list passes and pipelines, then exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    add_network_arguments(parser)  # read by the cost analysis and by private runs (aero_compile.network)
    for extension in _extensions():
        extension.add_arguments(parser)
    return parser


def list_passes() -> None:
    from .pass_manager import PASSES, PIPELINES, known_pass_names

    known_pass_names()  # loads the built-in passes
    for name, info in sorted(PASSES.items()):
        kind = "preserves computation" if info.preserves_computation else "changes architecture"
        described = [f"{key}={spec.describe()}" if spec is not None else key for key, spec in info.schema.items()]
        options = f" options: {'; '.join(described)}" if described else ""
        once = " (runs once per pipeline)" if info.once else ""
        print(f"{name:18s} {info.summary} [{kind}]{once}{options}")
    for name, text in PIPELINES.items():
        print(f"{name:18s} pipeline: {text or '(no passes)'}")


# Options that name a file the run writes: checked before any work, staged, moved into place at the end.
# Extensions add theirs (their OUTPUT_OPTIONS).
OUTPUT_OPTIONS = {"output": "-o", "report_json": "--report-json"}


def output_options() -> dict[str, str]:
    """dest -> flag of every option naming a file the run writes (the core's and the extensions')."""
    options = dict(OUTPUT_OPTIONS)
    for extension in _extensions():
        options.update(getattr(extension, "OUTPUT_OPTIONS", {}))
    return options


def check_arguments(args: argparse.Namespace) -> None:
    """Every option checkable without a model, before anything is loaded (one-line AeroError)."""
    if args.seq_len < 1:
        raise AeroError(f"--seq-len must be a positive integer, got {args.seq_len}")
    if args.emit and not args.output:
        raise AeroError(f"--emit {args.emit} needs -o PATH.{args.emit}")
    if args.output:
        from .targets import output_suffix

        output_suffix(args.output, args.emit)  # a bad suffix fails now, not after the passes
    if args.calibrate is not None and not 1 <= args.calibrate <= MAX_CALIBRATION_SEQUENCES:
        raise AeroError(f"--calibrate must be a number of sequences in [1, {MAX_CALIBRATION_SEQUENCES}], "
                        f"got {args.calibrate}")
    check_network_arguments(args)
    args.emit_options = {}  # e.g. the ONNX opset: bad values fail now, not after the passes
    for extension in _extensions():
        if hasattr(extension, "check"):
            extension.check(args)
        if hasattr(extension, "emit_options"):
            args.emit_options.update(extension.emit_options(args))


def compile_command(args: argparse.Namespace) -> int:
    check_arguments(args)
    written = output_options()
    with OutputPlan({flag: getattr(args, option, None) for option, flag in written.items()}) as outputs:
        for option, flag in written.items():  # writers write into the stage; commit() moves them all
            if getattr(args, option, None):
                setattr(args, option, str(outputs.staged(flag)))
        _compile(args, outputs)
        outputs.commit()
    return 0


def _compile(args: argparse.Namespace, outputs: OutputPlan) -> None:
    from .capturing import capture
    from .fileio import write_json_atomic
    from .loader import load_model
    from .pass_manager import PassManager
    from .report import print_summary_table

    manager = PassManager.from_pipeline(args.passes, verify=not args.no_verify, seq_len=args.seq_len,
                                        calibration={"calibrate": args.calibrate, "tokens": args.calibrate_tokens})
    model = load_model(args.model, arch=args.arch, config=args.config, trust_pickle=args.trust_pickle)
    graph = capture(model, name=args.model)
    for extension in _extensions():  # what needs the graph, before any pass runs
        if hasattr(extension, "check_graph"):
            extension.check_graph(args, graph)
    result = manager.run(graph)
    report = result.report
    if args.output:
        from .targets import emit

        report.output = outputs.final_paths(emit(result.graph_module, args.output, format=args.emit,
                                                 **getattr(args, "emit_options", {})))
    print_summary_table(report)
    for extension in _extensions():
        extension.apply(args, result)
    for extension in _extensions():
        if hasattr(extension, "finish"):
            extension.finish(args, result)
    if args.report_json:
        write_json_atomic(args.report_json, report.to_json())


def main(argv: list[str] | None = None) -> int:
    _handle_interrupts()  # also when main() is called from Python
    _INTERRUPTS.clear()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    try:
        if not {"-h", "--help"} & set(argv):
            _import_torch_uninterrupted()  # every command needs torch
        if argv and argv[0] in SUBCOMMANDS:
            module_name, function = SUBCOMMANDS[argv[0]].split(":")
            return int(getattr(importlib.import_module(module_name), function)(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        if args.list_passes:
            list_passes()
            return 0
        return compile_command(args)
    except AeroError as exc:
        if _INTERRUPTS:  # an interrupt that a library reported as its own error
            return _interrupted()
        print(f"aero-compile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:  # a bug in aero-compile, not in the input: still one line unless --debug
        if _INTERRUPTS:
            return _interrupted()
        if debug:
            raise
        print(f"aero-compile: internal error: {describe(exc)} "
              "(re-run with --debug for the traceback)", file=sys.stderr)
        return 1


def _interrupted() -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the goodbye
    print("aero-compile: interrupted; nothing written", file=sys.stderr)
    return 130


def run() -> None:
    """The console script and ``python -m aero_compile``: main(), then exit with its status.

    After an interrupt the status is 130 with nothing half-written. The exit skips interpreter
    finalization there: an interrupt that landed inside code torch runs through ``PyRun_String`` marks
    the interpreter as killed by SIGINT even though main() handled it, and a normal exit would then end
    the process by SIGINT instead of status 130.
    """
    status = main()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done (or abandoned): a late Ctrl-C changes nothing
    # A Ctrl-C that landed in torch's code and was swallowed there (the run then finished: its outputs are
    # complete and committed) marks the interpreter the same way: leave without finalization then too.
    if status == 130 or _INTERRUPTS:
        if status == 0:
            print("aero-compile: interrupted after the run finished; its outputs are complete", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
