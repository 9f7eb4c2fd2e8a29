"""The client's prompt: ``--prompt TEXT`` through the model's tokenizer, or ``--prompt-ids 1,2,3``.

A built-in model has no tokenizer unless ``--tokenizer PATH`` names one (the tokenizer.json a trained
run wrote); a Hugging Face directory or a trained .pt2 brings its own (``tokenizer.json`` beside it).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AeroError


def parse_prompt_ids(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]; anything else is refused in one line."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise AeroError("--prompt-ids is empty: give at least one token id, e.g. --prompt-ids 464,3290")
    ids = []
    for item in items:
        if not item.isdigit():
            raise AeroError(f"--prompt-ids takes non-negative integers separated by commas, got '{item}' in '{text}'")
        ids.append(int(item))
    return ids


def tokenizer_for(model_spec: str, tokenizer_path: str | None):
    """The tokenizer to encode ``--prompt`` with: ``--tokenizer``, or the one the model brings; else refused."""
    from ..training.tokenizer import load_tokenizer_file, model_tokenizer_path

    if tokenizer_path:
        if not Path(tokenizer_path).is_file():
            raise AeroError(f"--tokenizer {tokenizer_path}: no such file (give a tokenizer.json)")
        return load_tokenizer_file(tokenizer_path)
    found = model_tokenizer_path(model_spec)
    if found is not None:
        return load_tokenizer_file(found)
    path = Path(str(model_spec))
    if path.is_dir():
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
        except Exception:
            pass
    raise AeroError(f"--prompt needs a tokenizer and the model '{model_spec}' has none: give --prompt-ids 1,2,3, "
                    "or --tokenizer PATH (the tokenizer.json the model was trained with)")


def prompt_ids(args) -> list[int] | None:
    """The prompt's token ids from ``--prompt`` / ``--prompt-ids``; None when neither is given."""
    if args.prompt is not None and args.prompt_ids is not None:
        raise AeroError("give --prompt TEXT or --prompt-ids 1,2,3, not both")
    if args.prompt_ids is not None:
        return parse_prompt_ids(args.prompt_ids)
    if args.prompt is None:
        return None
    if not args.prompt.strip():
        raise AeroError("--prompt is empty: give some text to continue (or --prompt-ids 1,2,3)")
    ids = tokenizer_for(args.model, getattr(args, "tokenizer", None)).encode(args.prompt).ids
    if not ids:
        raise AeroError(f"--prompt '{args.prompt}' encodes to no tokens: give some text to continue")
    return list(ids)


def check_fits_context(prompt_tokens: int, new_tokens: int, context: int | None, vocab: int | None,
                       ids: list[int] | None) -> None:
    """A prompt (and what is generated after it) must fit the model's context; its ids its vocabulary."""
    if context and prompt_tokens > context:
        raise AeroError(f"the prompt has {prompt_tokens} tokens but the model's context is {context}: "
                        "give a shorter prompt")
    if context and prompt_tokens + new_tokens - 1 > context:
        raise AeroError(f"--generate {new_tokens} after a {prompt_tokens}-token prompt runs past the model's context of "
                        f"{context}: generate at most {context - prompt_tokens + 1} tokens")
    if ids and vocab and max(ids) >= vocab:
        raise AeroError(f"prompt token id {max(ids)} is outside the model's vocabulary of {vocab}: "
                        f"ids must be below {vocab}")
