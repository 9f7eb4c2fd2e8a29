"""Run `--passes all` over tiny configs of many Hugging Face families and tabulate what happened.

    python benchmarks/families.py

One row per family: nonlinear op counts before -> after, and each pass's rewrite count. A family
whose norms/activations survive, or whose FFN scaling found no FFN, shows it here.
"""

from __future__ import annotations

import time
import warnings

SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=256,
             max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0)
FAMILIES = {
    "llama": dict(SMALL, num_key_value_heads=2),
    "qwen2": dict(SMALL, num_key_value_heads=2),
    "qwen3": dict(SMALL, num_key_value_heads=2, head_dim=16),
    "mistral": dict(SMALL, num_key_value_heads=2),
    "gemma": dict(SMALL, num_key_value_heads=1, head_dim=16),
    "phi": dict(SMALL),
    "gpt_neox": dict(SMALL),
    "opt": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128, vocab_size=256,
                max_position_embeddings=256, word_embed_proj_dim=64, bos_token_id=0, eos_token_id=0, pad_token_id=0),
    "gptj": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=256, rotary_dim=8, bos_token_id=0, eos_token_id=0),
    "falcon": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256, bos_token_id=0,
                   eos_token_id=0, new_decoder_architecture=False),
    "bloom": dict(n_layer=2, hidden_size=64, n_head=4, vocab_size=256, bos_token_id=0, eos_token_id=0),
    "gpt_bigcode": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=256, bos_token_id=0, eos_token_id=0),
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=256, bos_token_id=0, eos_token_id=0),
}
SHOWN = ["layernorm", "rmsnorm", "gelu", "relu", "silu", "softmax", "linear", "unknown"]


def main() -> None:
    warnings.filterwarnings("ignore")
    import aero_compile as ac
    from aero_compile.errors import describe
    from aero_compile.models.hf import hf_causal_lm

    print(f"| family | {' | '.join(SHOWN)} | rewrites per pass | seconds |")
    print("|---|" + "---|" * (len(SHOWN) + 2))
    for family, config in FAMILIES.items():
        start = time.perf_counter()
        try:
            gm = ac.capture(hf_causal_lm(family, config), name=family)
            report = ac.PassManager.from_pipeline("all").run(gm).report
        except Exception as exc:  # a family that fails is a row of the table, not the end of it
            print(f"| {family} | failed: {describe(exc, 120)} |")
            continue
        before, after = report.before.op_counts, report.after.op_counts
        cells = [f"{before.get(k, 0)}→{after.get(k, 0)}" for k in SHOWN]
        rewrites = ", ".join(f"{p.name} {p.changed}" for p in report.passes)
        print(f"| {family} | {' | '.join(cells)} | {rewrites} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
