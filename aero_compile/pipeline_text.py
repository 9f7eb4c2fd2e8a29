"""Pipelines and model specs written as text, MLIR style: ``name{key=value,...},name2``.

``parse_pipeline("remove-layernorm,prune-ffn{last=6}")`` -> ``[("remove-layernorm", {}), ("prune-ffn", {"last": 6})]``.
The same grammar gives built-in models their config overrides: ``gpt2{n_layer=18,vocab_size=16384}``.
"""

from __future__ import annotations

from .errors import AeroError


def parse_value(text: str):
    """'6' -> 6, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_item(text: str) -> tuple[str, dict]:
    """'prune-ffn{last=6}' -> ('prune-ffn', {'last': 6})."""
    text = text.strip()
    if "{" not in text:
        if "}" in text:
            raise AeroError(f"unbalanced braces in '{text}': write name{{key=value,...}}")
        return text, {}
    name, _, rest = text.partition("{")
    if not rest.endswith("}") or "{" in rest[:-1] or "}" in rest[:-1]:
        raise AeroError(f"malformed options in '{text}': write name{{key=value,...}}")
    options = {}
    body = rest[:-1].strip()
    for pair in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise AeroError(f"malformed option '{pair}' in '{text}': write key=value")
        options[key.strip().replace("-", "_")] = parse_value(value)
    return name.strip(), options


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside braces."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise AeroError(f"unbalanced braces in '{text}'")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise AeroError(f"unbalanced braces in '{text}'")
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_pipeline(text: str) -> list[tuple[str, dict]]:
    return [parse_item(item) for item in split_top_level(text)]


def format_item(name: str, options: dict) -> str:
    if not options:
        return name
    body = ",".join(f"{k.replace('_', '-')}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
    return f"{name}{{{body}}}"
