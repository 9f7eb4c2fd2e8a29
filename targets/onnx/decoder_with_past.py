"""The decode step as ONNX: ``input_ids, past_0 .. past_n -> logits, present_0 .. present_n``.

The layout onnxruntime users know from decoder-with-past exports: each cached K or V comes in as
``past_i`` and goes out, with the new rows appended, as ``present_i`` (metadata
``aero_compile.cache`` says which layer and which position dim each one is). The prompt runs through
the same file with empty ``past_i`` (zero rows), so one file generates from scratch; the check does
exactly that in onnxruntime and must give the greedy tokens of the PyTorch programs.

    aero-compile gpt2-tiny --passes all --generate 8 -o m.onnx    # also writes m.decoder_with_past.onnx
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aero_compile.capturing import quiet_export
from aero_compile.errors import AeroError, describe
from aero_compile.generation.decoding import greedy_generate
from aero_compile.generation.programs import GenerationPrograms

from .export import describe_export_error, finish_model
from .staging import staged_model_path
from .verify import ATOL, RTOL, _ort_message, check_file

SUFFIX = ".decoder_with_past.onnx"
EXAMPLE_PAST = 5  # cached rows of the export example (above 1, so export keeps the dim symbolic)
CHECK_NEW_TOKENS = 4


def decoder_path(main_path: str | Path) -> Path:
    """``m.onnx`` -> ``m.decoder_with_past.onnx`` beside it."""
    main = Path(main_path)
    return main.with_name(main.name[: -len(main.suffix)] + SUFFIX if main.suffix else main.name + SUFFIX)


def _example(programs: GenerationPrograms):
    token = torch.zeros(2, 3, dtype=torch.long)
    with torch.no_grad():
        _, *cache = programs.prefill(torch.zeros(2, EXAMPLE_PAST, dtype=torch.long))
    # own storage: a view would make export guard on its base's shape, which no caller's tensor has
    return token, [tensor.clone() for tensor in cache]


def save_decoder_with_past(programs: GenerationPrograms, path: str | Path, prompt: torch.Tensor, *,
                           opset: int | None = None, max_seq_len: int | None = None) -> dict:
    """Export the decode step to ``path`` (atomically) and check it generates ``prompt``'s greedy tokens."""
    from .opset import check_opset, export_opset

    opset = check_opset(opset)
    token, cache = _example(programs)
    names = [f"past_{i}" for i in range(len(cache))]
    dims = [{0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}]
    dims += [{0: torch.export.Dim.AUTO, entry.seq_dim: torch.export.Dim.AUTO} for entry in programs.cache]
    with quiet_export():
        try:
            exported = torch.export.export(programs.decode, (token, *cache), dynamic_shapes=tuple(dims), strict=False)
            program = torch.onnx.export(exported, (token, *cache), dynamo=True, input_names=["input_ids", *names],
                                        output_names=["logits", *[f"present_{i}" for i in range(len(cache))]],
                                        verbose=False, optimize=True, opset_version=export_opset(opset))
        except Exception as exc:
            raise AeroError(f"cannot export the decode step to ONNX: {describe_export_error(exc)}") from None
    _name_axes(program, programs)
    layout = [{"name": name, "layer": entry.layer, "position_dim": entry.seq_dim, "source": entry.source}
              for name, entry in zip(names, programs.cache)]
    finish_model(program, opset, max_seq_len=None,
                 metadata={"aero_compile.cache": json.dumps(layout), "aero_compile.program": "decode-step"})
    with staged_model_path(path) as staged:
        program.save(str(staged))
        check_file(staged)
        tokens, logits = generate_in_onnxruntime(staged, programs, prompt, CHECK_NEW_TOKENS)
        expected, expected_logits = greedy_generate(programs, prompt, CHECK_NEW_TOKENS)
        if tokens != expected:
            raise AeroError(f"the decode-step ONNX file generates {tokens} in onnxruntime where PyTorch generates "
                            f"{expected}")
        worst = max(float(np.abs(got - want[0].numpy()).max()) for got, want in zip(logits, expected_logits))
        scale = max(float(np.abs(want.numpy()).max()) for want in expected_logits)
        if not worst <= ATOL + RTOL * scale:
            raise AeroError(f"the decode-step ONNX file's logits differ from PyTorch's by {worst:.3g} in onnxruntime")
    return {"path": str(path), "inputs": ["input_ids", *names], "outputs": ["logits"] + [f"present_{i}" for i in range(len(names))],
            "cache": layout, "greedy_tokens": tokens, "prompt_tokens": int(prompt.shape[1]), "max_abs_logits_diff": worst}


def _name_axes(program, programs: GenerationPrograms) -> None:
    """batch, sequence (new tokens) and past_sequence instead of export's symbol names."""
    inputs = program.model.graph.inputs
    names = {inputs[0].shape[0]: "batch", inputs[0].shape[1]: "sequence"}
    for value, entry in zip(inputs[1:], programs.cache):
        names.setdefault(value.shape[entry.seq_dim], "past_sequence")
    program.rename_axes({dim: name for dim, name in names.items() if not isinstance(dim, int)})


def generate_in_onnxruntime(path: Path, programs: GenerationPrograms, prompt: torch.Tensor,
                            new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens (and each step's logits) from the file alone: the prompt with an empty cache, then one
    token a step."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise AeroError(f"onnxruntime cannot load the decode-step file: {_ort_message(exc)}") from None
    _, example_cache = _example(programs)
    cache = []
    for entry, tensor in zip(programs.cache, example_cache):
        shape = list(tensor.shape)
        shape[0], shape[entry.seq_dim] = prompt.shape[0], 0
        cache.append(np.zeros(shape, dtype=np.float32))
    ids, tokens, step_logits = prompt.numpy(), [], []
    for _ in range(new_tokens):
        feeds = {"input_ids": ids, **{f"past_{i}": value for i, value in enumerate(cache)}}
        try:
            logits, *cache = session.run(None, feeds)
        except Exception as exc:
            raise AeroError(f"onnxruntime cannot run the decode-step file: {_ort_message(exc)}") from None
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        step_logits.append(logits[0, -1])
        ids = np.array([[token]], dtype=np.int64)
    return tokens, step_logits


__all__ = ["SUFFIX", "decoder_path", "generate_in_onnxruntime", "save_decoder_with_past", "describe"]
