"""Every causal-LM family of the installed transformers, from a tiny config, through `--passes all`.

    python benchmarks/families.py                    # all families (hours on 2 cores); writes a Markdown table
    python benchmarks/families.py llama mixtral      # some
    python benchmarks/families.py --rows rows.jsonl --workdir DIR   # resumable: families in rows.jsonl are skipped

One row per family in ``transformers``' causal-LM mapping: its tiny config is the family's own default
with every size field this file knows shrunk (2 layers, width 64, 4 heads, vocabulary 256, context 128,
4 experts, ...; per-layer lists cut to 2 layers). Then what the CLI does with a model: capture, `all`,
the report, a .pt2 (``save_pt2``) and an ONNX file (``save_onnx``). A row says:

* exported, or refused with the one-line error the CLI prints (``AeroError``); anything else is a bug
  and shows as ``BUG`` with the exception's first line;
* the nonlinear ops left on secret data after `all`, by name (the report's ``after.remaining_nonlinear``);
* whether the .pt2 loads in a fresh interpreter that cannot import transformers or aero_compile (all
  files are reloaded at the end, in one subprocess);
* whether ONNX export and its onnxruntime check passed.

Families run in a worker process that is restarted after a crash or a hang (``--timeout`` seconds per
family without progress), so one family cannot end the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

LAYERS = 2
# Size fields, as families name them, and their tiny values. Set where a family's config has the field.
TINY = {
    **dict.fromkeys(["num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers",
                     "num_decoder_layers"], LAYERS),
    **dict.fromkeys(["hidden_size", "n_embd", "d_model", "dim", "model_dim", "embed_dim", "d_embed",
                     "word_embed_proj_dim", "hidden_dim"], 64),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads",
                     "swa_num_attention_heads", "linear_num_heads"], 4),
    **dict.fromkeys(["num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num",
                     "swa_num_key_value_heads", "linear_num_key_heads", "linear_num_value_heads"], 2),
    **dict.fromkeys(["head_dim", "swa_head_dim", "linear_head_dim", "linear_key_head_dim", "linear_value_head_dim",
                     "v_head_dim", "kv_channels", "attention_head_size"], 16),
    **dict.fromkeys(["intermediate_size", "ffn_dim", "n_inner", "decoder_ffn_dim", "ffn_hidden_size", "d_ff",
                     "inner_hidden_size", "d_inner", "shared_intermediate_size", "dense_intermediate_size"], 128),
    **dict.fromkeys(["moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size"], 32),
    **dict.fromkeys(["num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "num_experts_per_token", "top_k"], 2),
    **dict.fromkeys(["n_group", "num_expert_group", "topk_group"], 1),
    **dict.fromkeys(["n_shared_experts", "num_shared_experts", "moe_num_shared_experts", "first_k_dense_replace",
                     "num_dense_layers"], 1),
    "vocab_size": 256,
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length",
                     "max_sequence_length", "block_size", "model_max_length"], 128),
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank"], 16),
    **dict.fromkeys(["qk_rope_head_dim", "qk_nope_head_dim", "rotary_dim", "rotary_emb_base_dim"], 8),
    "qk_head_dim": 16,
    "index_head_dim": 16, "index_n_heads": 4,
    **dict.fromkeys(["bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"], 0),
    "is_decoder": True,  # encoder families' causal-LM classes (BertLMHeadModel, ...) are decoders only so
}
TIMEOUT_S = 600
SEQ_LEN = 32
MAX_PARAMS = 20_000_000
MEMORY_LIMIT = 16 * 2**30  # address space of the worker process


def tiny_overrides(model_type: str) -> dict:
    """The family's default config with every known size field shrunk (sub text configs too)."""
    from transformers import CONFIG_MAPPING

    default = CONFIG_MAPPING[model_type]()
    return _shrink(default)


def _shrink(config) -> dict:
    values = config.to_dict()
    names = set(values) | set(getattr(config, "attribute_map", {}) or {})
    overrides = {name: value for name, value in TINY.items() if name in names}
    for kv, heads in (("num_key_value_heads", "num_attention_heads"), ("n_kv_heads", "n_heads"),
                      ("num_kv_heads", "num_heads")):
        if kv in overrides and heads in overrides and values.get(kv) in (None, values.get(heads)):
            overrides[kv] = overrides[heads]  # no grouped queries by default (MLA needs it): keep it so
    if values.get("head_dim") is not None and values.get("head_dim") == values.get("qk_rope_head_dim"):
        overrides["head_dim"] = overrides["qk_rope_head_dim"]  # MLA families: the rotary part is head_dim
    layers = next((values[k] for k in ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers")
                   if isinstance(values.get(k), int)), None)
    for key, value in values.items():
        if isinstance(value, list) and layers and len(value) == layers and key not in overrides:
            kept = value[:LAYERS]
            try:
                kinds = list(dict.fromkeys(value))  # keep every kind of layer (sliding and full attention)
                if set(kept) != set(kinds) and len(kinds) <= LAYERS:
                    kept = kinds + value[:LAYERS - len(kinds)]
            except TypeError:  # unhashable entries
                pass
            overrides[key] = kept
    from transformers import PretrainedConfig

    for key in values:  # sub-configs (text_config, encoder_config, ...) shrink the same way
        try:
            sub = getattr(config, key, None)
        except Exception:  # per-layer attributes some configs refuse to read globally
            continue
        if isinstance(sub, PretrainedConfig):
            overrides[key] = {**sub.to_dict(), **_shrink(sub)}
    return overrides


def run_family(model_type: str, workdir: str) -> dict:
    """One row: what the CLI's steps do with a tiny model of this family."""
    import torch

    import aero_compile as ac
    from aero_compile.errors import AeroError, describe
    from aero_compile.models.hf import hf_causal_lm

    row = {"family": model_type}
    start = time.perf_counter()
    try:
        overrides = tiny_overrides(model_type)
    except Exception as exc:
        return {**row, "status": "no tiny config", "detail": describe(exc, 160)}
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = hf_causal_lm(model_type, overrides)
    except Exception as exc:
        return {**row, "status": "no tiny config", "detail": describe(exc, 160)}
    params = sum(p.numel() for p in model.parameters())
    row["params"] = params
    if params > MAX_PARAMS:
        return {**row, "status": "not tiny", "detail": f"{params / 1e6:.0f}M parameters at the tiny sizes"}
    try:
        gm = ac.capture(model, name=model_type)
        result = ac.PassManager.from_pipeline("all", seq_len=min(SEQ_LEN, gm.meta["aero"].max_seq_len or SEQ_LEN)).run(gm)
    except AeroError as exc:
        return {**row, "status": "refused", "detail": str(exc), "seconds": round(time.perf_counter() - start, 1)}
    except Exception as exc:
        return {**row, "status": "BUG", "detail": describe(exc, 200), "seconds": round(time.perf_counter() - start, 1)}
    report = result.report
    row["status"] = "exported"
    row["remaining"] = [entry.label for entry in report.after.remaining_nonlinear]
    row["unknown"] = sorted(set(report.before.unknown_ops or []) | set(report.after.unknown_ops or []))
    row["rewrites"] = {entry.name: entry.changed for entry in report.passes}
    row["notes"] = [note for entry in report.passes for note in (entry.notes or []) if "found an FFN in" in note]
    pt2 = os.path.join(workdir, f"{model_type}.pt2")
    try:
        from aero_compile.targets.pt2 import save_pt2

        save_pt2(result.graph_module, pt2)
        row["pt2"] = pt2
    except AeroError as exc:
        row["pt2_refused"] = str(exc)
    except Exception as exc:
        row["pt2_refused"] = "BUG " + describe(exc, 160)
    try:
        from aero_compile.targets.onnx import save_onnx

        save_onnx(result.graph_module, os.path.join(workdir, f"{model_type}.onnx"))
        row["onnx"] = "yes"
    except AeroError as exc:
        row["onnx"] = "no: " + str(exc)[:160]
    except Exception as exc:
        row["onnx"] = "no (BUG): " + describe(exc, 160)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def worker(families: list[str], workdir: str) -> None:
    import resource

    # A family whose "tiny" config is still huge fails with MemoryError instead of taking the machine down.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    for family in families:
        print(json.dumps({"start": family}), flush=True)
        print(json.dumps({"row": run_family(family, workdir)}), flush=True)


_RELOAD = """
import json, sys
sys.modules["transformers"] = None
sys.modules["aero_compile"] = None
import torch
out = {}
for path in sys.argv[1:]:
    try:
        program = torch.export.load(path)
        program.module()(torch.zeros(1, 5, dtype=torch.long))
        out[path] = "yes"
    except Exception as exc:
        out[path] = "no: " + type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0][:120]
print(json.dumps(out))
"""


def fresh_reload(paths: list[str], workdir: str) -> dict[str, str]:
    if not paths:
        return {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _RELOAD, *paths], capture_output=True, text=True, cwd=workdir, env=env)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {path: f"no: reload process failed ({done.stderr.strip().splitlines()[-1:]})" for path in paths}


def run_all(families: list[str], workdir: str, timeout: float, record=None) -> list[dict]:
    """Families in a worker process, restarted after a crash or a family that makes no progress;
    ``record(row)`` is called as each row is done."""
    import selectors

    rows, pending = _RecordedList(record), list(families)
    while pending:
        errors = tempfile.TemporaryFile(mode="w+")  # the worker's stderr: its last line explains a death
        process = subprocess.Popen([sys.executable, __file__, "--worker", "--workdir", workdir, *pending],
                                   stdout=subprocess.PIPE, stderr=errors, text=True)
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        current, started, started_any = None, time.monotonic(), False
        while True:
            if not selector.select(timeout=max(1.0, timeout - (time.monotonic() - started))):
                process.kill()
                process.wait()
                if current is not None:
                    rows.append({"family": current, "status": "BUG", "detail": f"no result after {timeout:.0f} s"})
                    print(f"{current}: timed out", file=sys.stderr, flush=True)
                    pending.remove(current)
                break
            line = process.stdout.readline()
            if not line:
                code = process.wait()
                if current is not None and current in pending:
                    errors.seek(0)
                    last = (errors.read().strip().splitlines() or [""])[-1][:160]
                    rows.append({"family": current, "status": "BUG", "detail": f"the process died (exit {code}): {last}"})
                    pending.remove(current)
                break
            message = json.loads(line)
            if "start" in message:
                current, started, started_any = message["start"], time.monotonic(), True
            else:
                rows.append(message["row"])
                pending.remove(message["row"]["family"])
                current, started = None, time.monotonic()
                print(f"{message['row']['family']}: {message['row']['status']}", file=sys.stderr, flush=True)
        if process.returncode not in (0, None) and current is None and pending and not started_any:
            errors.seek(0)
            last = (errors.read().strip().splitlines() or [""])[-1][:160]
            rows.append({"family": pending.pop(0), "status": "BUG", "detail": f"the worker did not start: {last}"})
        errors.close()
    return rows


class _RecordedList(list):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def append(self, row) -> None:
        super().append(row)
        if self.record:
            self.record(row)


def table(rows: list[dict]) -> str:
    lines = ["| family | result | nonlinear ops left after `all` (secret data) | .pt2, fresh interpreter | ONNX | s |",
             "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["family"]):
        status = row["status"]
        if status == "exported":
            result = "exported" + (f" ({'; '.join(row['notes'])})" if row.get("notes") else "")
            remaining = ", ".join(row["remaining"]) or "none"
            if row.get("unknown"):
                remaining += f"; unclassified: {', '.join(row['unknown'])}"
            pt2 = row.get("reload") or ("refused: " + row.get("pt2_refused", "?"))
            onnx = row.get("onnx", "")
        else:
            result = f"{status}: {row.get('detail', '')}"
            remaining, pt2, onnx = "", "", ""
        cells = [row["family"], result, remaining, pt2, onnx, str(row.get("seconds", ""))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="model types (default: every causal-LM family)")
    parser.add_argument("--out", default="families_table.md", help="Markdown table to write")
    parser.add_argument("--json", help="also write the rows as JSON")
    parser.add_argument("--rows", help="append each row to this JSON-lines file as it is done; families "
                                       "already in it are not run again (with --workdir, a run can resume)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per family without progress")
    parser.add_argument("--workdir", help="where the .pt2 and .onnx files go (default: a temporary folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.families, args.workdir)
        return
    families = args.families
    if not families:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        families = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    done = []
    if args.rows and os.path.exists(args.rows):
        with open(args.rows) as handle:
            done = [json.loads(line) for line in handle if line.strip()]
    finished = {row["family"] for row in done}

    def record(row: dict) -> None:
        if args.rows:
            with open(args.rows, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory(prefix="aero-families-") as scratch:
        workdir = args.workdir or scratch
        os.makedirs(workdir, exist_ok=True)
        rows = done + list(run_all([f for f in families if f not in finished], workdir, args.timeout, record))
        reloaded = fresh_reload([row["pt2"] for row in rows if row.get("pt2") and os.path.exists(row["pt2"])], workdir)
        for row in rows:
            if row.get("pt2"):
                row["reload"] = reloaded.get(row["pt2"], "no: not reloaded")
                row["pt2"] = os.path.basename(row["pt2"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    with open(args.out, "w") as handle:
        handle.write(table(rows))
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(table(rows))
    print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())))


if __name__ == "__main__":
    main()
