"""Text generation as a graph transformation: prefill and decode-step programs, their cost per token.

    from aero_compile.generation import derive_programs, greedy_generate
    programs = derive_programs(gm)   # gm: a captured decoder, before or after any passes
"""

from .programs import CacheEntry, GenerationPrograms, derive_programs

__all__ = ["CacheEntry", "GenerationPrograms", "derive_programs"]
