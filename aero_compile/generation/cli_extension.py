"""The generation flags of ``aero-compile``: cost per generated token, before vs after the passes.

    aero-compile gpt2 --passes all --generate 16                 # prompt of --seq-len tokens
    aero-compile gpt2-tiny --generate 8 --prompt-ids 1,2,3 --report-json r.json
"""

from __future__ import annotations

import argparse

from ..errors import AeroError

VERIFY_NEW_TOKENS = 3  # greedy tokens the derived programs are checked on against re-running the sequence
VERIFY_PROMPT = 8  # prompt length of that check when no prompt is given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation (prefill + decode steps with a K/V cache)")
    group.add_argument("--generate", type=int, metavar="N",
                       help="price generating N tokens: prefill of the prompt, then N-1 decode steps, beside "
                            "re-running the whole sequence per token (JSON: before/after.generation)")
    group.add_argument("--prompt", metavar="TEXT", help="the prompt, through the model's tokenizer (default: "
                                                        "--seq-len random tokens)")
    group.add_argument("--prompt-ids", metavar="1,2,3", help="the prompt as token ids")
    group.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json for --prompt where the model has none "
                                                          "(a built-in trained by `aero-compile train`)")
    from .sampling import add_arguments as add_sampling_arguments

    add_sampling_arguments(group)


def check(args: argparse.Namespace) -> None:
    """What needs no model: run before anything is loaded. Sets ``args.prompt_token_ids``."""
    from .prompt import prompt_ids

    from .sampling import sampling_from_args

    args.prompt_token_ids = None
    given = args.prompt is not None or args.prompt_ids is not None
    party = _multihost_party(args)
    if args.generate is not None and args.generate < 1:
        raise AeroError(f"--generate must be a positive number of tokens, got {args.generate}")
    args.sampling = sampling_from_args(args)
    if args.generate is None:
        if given and not party:
            raise AeroError("--prompt / --prompt-ids is the prompt of --generate N: add --generate N "
                            "(or run as the client of a multi-host run: --run-private --party or --spu-party 1)")
        if given:  # the client's own input of a multi-host forward pass
            args.prompt_token_ids = prompt_ids(args)
        return
    if getattr(args, "run_private", False):
        from ..targets.private.engines import DEFAULT_ENGINE, engine

        chosen = engine(getattr(args, "engine", None) or DEFAULT_ENGINE)
        if not chosen.generation:
            raise AeroError(f"--run-private --generate does not run under --engine {chosen.name}: drop --engine")
        flag = chosen.cli_module().multihost_flag(args)
        if flag and not chosen.multihost_generation:
            raise AeroError(f"--generate under --engine {chosen.name} runs privately on one machine only "
                            f"(--run-private): drop {flag}")
    if getattr(args, "onnx_for", None) == "crypten":
        raise AeroError("--generate with an ONNX output writes the decode step for onnxruntime: drop --onnx-for crypten")
    args.prompt_token_ids = prompt_ids(args)


def check_graph(args: argparse.Namespace, gm) -> None:
    """Right after capture, before any pass: the prompt fits the context and vocabulary, and the decode step
    of the captured graph can be derived (kept for ``apply``)."""
    from ..graph_info import graph_info
    from .prompt import check_fits_context

    ids = args.prompt_token_ids
    info = graph_info(gm)
    if args.generate is None:
        if ids:  # a multi-host client's prompt: refused here, before it connects to anyone
            check_fits_context(len(ids), 1, info.max_seq_len, info.vocab_size, ids)
        return
    from .programs import derive_programs

    check_fits_context(len(ids) if ids else args.seq_len, args.generate, info.max_seq_len, info.vocab_size, ids)
    if getattr(args, "run_private", False) and not (_multihost_party(args) and not ids):
        check_fits_context(_private_prompt_tokens(args), args.generate, info.max_seq_len, info.vocab_size, ids)
    args.generation_programs_before = derive_programs(gm)


def apply(args: argparse.Namespace, result) -> None:
    """Derive prefill/decode from both graphs, check them, price them, print the table, fill the report."""
    if args.generate is None:
        return
    import torch

    from ..graph_info import graph_info
    from .decoding import check_against_rerun
    from .programs import derive_programs

    ids = args.prompt_token_ids
    # a multi-host owner learns the prompt's length from the client during its run (before this prices it)
    prompt_tokens = len(ids) if ids else getattr(args, "party_prompt_tokens", None) or args.seq_len
    info = graph_info(result.before)
    sides = {"before": result.before, "after": result.graph_module}
    before = getattr(args, "generation_programs_before", None) or derive_programs(result.before)
    programs = {"before": before, "after": derive_programs(result.graph_module)}
    if ids:
        check_prompt = torch.tensor([ids])
    else:
        generator = torch.Generator().manual_seed(0)
        check_prompt = torch.randint(0, info.vocab_size or 2, (1, min(prompt_tokens, VERIFY_PROMPT)), generator=generator)
    new = min(VERIFY_NEW_TOKENS, args.generate, max(1, (info.max_seq_len or 10**9) - check_prompt.shape[1] + 1))
    checks = {}
    # a multi-host party ran first and holds no usable plaintext model (the client's weights are blanked)
    party = _multihost_party(args)
    if not args.no_verify and not party:
        for side, gm in sides.items():
            checks[side] = check_against_rerun(gm, programs[side], check_prompt, new)
    _write_onnx_decoder(args, result, programs["after"], check_prompt)
    if ids:
        for side, check in checks.items():
            print(f"generation: greedy tokens {side} the passes (plaintext, first {len(check.tokens)}): {check.tokens}")
    if getattr(args, "no_cost", False):
        print("generation: not priced (--no-cost)")
        return
    from .pricing import price_generation
    from .table import print_generation_table

    from ..cost.cli_extension import _analysis_options

    options = _analysis_options(args)
    options.pop("seq_len")  # each program is priced at its own context
    costs = {side: price_generation(sides[side], programs[side], prompt_tokens, args.generate, **options)
             for side in sides}
    result.report.before.generation = costs["before"]
    result.report.after.generation = costs["after"]
    print_generation_table(costs["before"], costs["after"], options["profile"], checks)
    if getattr(args, "run_private", False) and not party:  # a party between hosts: the engine's run did it
        from .private_cli import run_private_generation

        run_private_generation(args, sides, programs, _private_prompt_tokens(args), result)


def _multihost_party(args: argparse.Namespace) -> str | None:
    """The flag that makes this run one party between hosts (``--party``, ``--spu-party``) where its engine
    also generates between hosts (``multihost_generation``): that party's own run takes the prompt; else None."""
    from ..targets.private.engines import DEFAULT_ENGINE, engine

    chosen = engine(getattr(args, "engine", None) or DEFAULT_ENGINE)
    return chosen.cli_module().multihost_flag(args) if chosen.multihost_generation else None


def _private_prompt_tokens(args: argparse.Namespace) -> int:
    if args.prompt_token_ids:
        return len(args.prompt_token_ids)
    return args.private_seq_len if getattr(args, "private_seq_len", None) is not None else args.seq_len


def _write_onnx_decoder(args: argparse.Namespace, result, programs, prompt) -> None:
    """With an ONNX output: the decode step beside it (past K/V in, present K/V out), checked in onnxruntime."""
    from pathlib import Path

    output = result.report.output or {}
    if output.get("format") != "onnx" or not args.output:
        return
    from ..targets.onnx.decoder_with_past import decoder_path, save_decoder_with_past

    staged = decoder_path(args.output)  # beside the staged main file: moved into place with it
    info = save_decoder_with_past(programs, staged, prompt, opset=getattr(args, "onnx_opset", None))
    main_name = Path(args.output).name
    final_main = next((f for f in output.get("files", []) if Path(f).name == main_name), args.output)
    info["path"] = str(Path(final_main).parent / staged.name)
    result.report.output = {**output, "decoder_with_past": info}
    print(f"ONNX decode step: {info['path']} (input_ids, past_0..past_{len(info['cache']) - 1} -> logits, present_*); "
          f"onnxruntime generates the PyTorch greedy tokens {info['greedy_tokens']} from a {info['prompt_tokens']}-token "
          f"prompt (max |logits diff| {info['max_abs_logits_diff']:.1e})")
