"""Load a model from whatever the user has: a built-in name, an HF directory, .pt2, a state dict.

Never unpickles arbitrary objects unless the user says so (``trust_pickle=True``): loading a pickle
runs whatever code it names.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from .errors import AeroError, describe
from .models import BUILTINS, build_builtin, is_builtin_spec
from .models.gpt2 import GPT, GPTConfig
from .models.hf import CausalLMLogits, hf_causal_lm, load_hf_directory

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or Path(spec).suffix != "" and "{" not in spec


def load_model(spec, *, arch: str | None = None, config: str | None = None, trust_pickle: bool = False):
    """An nn.Module (or ExportedProgram, for .pt2) from a name, a path or a module.

    spec: a built-in name such as "gpt2" or "gpt2{n_layer=6}", a save_pretrained directory, a .pt2
    file, a state dict (.pt/.pth, with ``arch`` or ``config``), a pickled module (``trust_pickle``),
    or an nn.Module / ExportedProgram (returned as is; HF models are wrapped to return logits).
    """
    if isinstance(spec, torch.export.ExportedProgram):
        return spec
    if isinstance(spec, nn.Module):
        return _wrap_hf(spec)
    spec = str(spec)
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            if not (path / "config.json").exists():
                raise AeroError(f"'{spec}' is a directory without config.json: give a save_pretrained directory")
            return load_hf_directory(spec)
        if path.suffix == ".pt2":
            return _load_pt2(path)
        if path.suffix in STATE_DICT_SUFFIXES:
            return _load_torch_file(path, arch=arch, config=config, trust_pickle=trust_pickle)
        raise AeroError(f"don't know how to load '{spec}': expected a .pt2, .pt/.pth state dict or a Hugging Face directory")
    if is_builtin_spec(spec):
        try:
            return build_builtin(spec)
        except AeroError:
            raise
        except Exception as exc:  # a Hugging Face config refusing the overrides: its reason, in one line
            if not (isinstance(exc, (ValueError, TypeError)) or type(exc).__module__.startswith("huggingface_hub")):
                raise
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise AeroError(f"cannot build '{spec}': {lines[-1] if lines else describe(exc)}") from exc
    if _looks_like_path(spec):
        raise AeroError(f"no such file or directory: '{spec}'")
    raise AeroError(f"unknown model '{spec}': give a path, or one of the built-ins: {', '.join(BUILTINS)}")


def _wrap_hf(module: nn.Module) -> nn.Module:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is a dependency, but a bare module needs no wrapping
        return module
    if isinstance(module, PreTrainedModel):
        module.config._attn_implementation = "eager"
        return CausalLMLogits(module.eval())
    return module


def _load_pt2(path: Path):
    import logging
    import zipfile

    if not zipfile.is_zipfile(path):
        raise AeroError(f"cannot read '{path}': not a torch.export .pt2 archive (truncated or another format?)")
    # torch.export logs a full traceback before raising on a bad archive; the one-line error suffices.
    export_logger = logging.getLogger("torch.export")
    level = export_logger.level
    export_logger.setLevel(logging.CRITICAL)
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # corrupt or foreign files raise many types
        missing = _unregistered_ops(path)
        if missing:
            raise AeroError(f"cannot read '{path}': it calls the op '{missing[0]}', which is not registered here (a "
                            "library's custom op: import the library that defines it, or re-export the model "
                            "without it)") from None
        raise AeroError(f"cannot read '{path}' as a torch.export .pt2 file ({type(exc).__name__}): is it complete?") from None
    finally:
        export_logger.setLevel(level)


_OP_TARGET = re.compile(r"torch\.ops\.([A-Za-z_][\w]*)\.([A-Za-z_][\w]*)")


def _unregistered_ops(path: Path) -> list[str]:
    """Ops a .pt2's serialized graph names that this process cannot resolve (``ns::op``), in order."""
    import zipfile

    missing: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".json"):
                    continue
                for namespace, op in _OP_TARGET.findall(archive.read(name).decode("utf-8", "replace")):
                    qualified = f"{namespace}::{op}"
                    if qualified in missing:
                        continue
                    try:
                        getattr(getattr(torch.ops, namespace), op)
                    except (AttributeError, RuntimeError):
                        missing.append(qualified)
    except (OSError, zipfile.BadZipFile):
        return []
    return missing


def _load_torch_file(path: Path, *, arch, config, trust_pickle):
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the class it refused ("Unsupported global"); any other
        # complaint means the bytes are not a valid pickle at all.
        if "Unsupported global" not in str(exc):
            raise AeroError(f"cannot read '{path}': corrupt or not a torch file") from None
        if not trust_pickle:
            raise AeroError(
                f"'{path}' holds a pickled object, and loading a pickle runs arbitrary code: pass --trust-pickle "
                "if you trust this file, or save a state dict (torch.save(model.state_dict())) and pass --arch"
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # unpickling runs foreign code, which fails in any way
            raise AeroError(f"cannot unpickle '{path}': {describe(exc)} "
                            "(the classes it names must be importable here)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise AeroError(f"cannot read '{path}': corrupt or not a torch file ({describe(exc)})") from None
    if isinstance(obj, nn.Module):
        return _wrap_hf(obj.eval())
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a training checkpoint: {"model": state_dict, ...}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AeroError(f"'{path}' is neither a state dict nor a module: save one with torch.save(model.state_dict())")
    model = _architecture_for(path, arch, config)
    _load_state(model, obj, path)
    return model.eval()


def _architecture_for(path: Path, arch: str | None, config: str | None) -> nn.Module:
    if config:
        return _architecture_from_config_file(Path(config))
    if arch:
        return build_builtin(arch)
    raise AeroError(f"'{path}' is a state dict: say which architecture it belongs to with --arch NAME (e.g. --arch gpt2) or --config FILE")


def _architecture_from_config_file(path: Path) -> nn.Module:
    """A config.json: Hugging Face (has model_type) or ours (GPTConfig fields)."""
    if not path.exists():
        raise AeroError(f"no such config file: '{path}'")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AeroError(f"config '{path}' is not valid JSON: {exc}") from None
    if "model_type" in values:
        model_type = values.pop("model_type")
        return hf_causal_lm(model_type, values)
    try:
        return GPT(GPTConfig(**values))
    except TypeError as exc:
        raise AeroError(f"config '{path}' does not describe our GPT-2 ({exc}) nor a Hugging Face model (no model_type)") from None


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    target = model
    own_keys = set(model.state_dict())
    if isinstance(model, CausalLMLogits) and not (set(state) & own_keys):
        target = model.model  # a plain transformers state dict, without our wrapper's prefix
        own_keys = set(target.state_dict())
    missing = sorted(own_keys - set(state))
    unexpected = sorted(set(state) - own_keys)
    # Tied weights may be saved once (lm_head tied to the embedding).
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise AeroError(
            f"state dict '{path}' does not match the architecture: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; check --arch/--config"
        )
    try:
        target.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise AeroError(f"state dict '{path}' does not fit the architecture: {str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
