"""Text generation as a graph transformation: prefill and decode-step programs, their cost per token.

    from aero_compile.generation import derive_programs
    from aero_compile.generation.decoding import greedy_generate
    programs = derive_programs(gm)   # gm: a captured decoder, before or after any passes
    tokens, step_logits = greedy_generate(programs, prompt_ids, new_tokens=8)
"""

from .programs import CacheEntry, GenerationPrograms, derive_programs

__all__ = ["CacheEntry", "GenerationPrograms", "derive_programs"]
