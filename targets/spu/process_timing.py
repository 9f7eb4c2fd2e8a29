"""Compute seconds of SPU op forms timed as ``--run-private --engine spu`` runs them: two processes over brpc.

    from aero_compile.targets.spu.process_timing import time_forms_in_processes
    cases, fixed = time_forms_in_processes(["matmul", "softmax"])

Why not the simulator: it runs both parties as threads of one process over an in-memory link, and its
timings misled the latency model (this machine, 2026-12-07: against a 2-process run of gpt2-tiny at T=32,
softmax 3.0x and the GELU 2.3-2.9x too slow, the matrix products 2.9x too fast). Here every form is
compiled as ``calibrate spu`` builds it, and run between two spawned party processes on loopback
(``party.run_parties``, the code a private run uses), ``repeats`` times back to back on the same
shares. The model owner's profiler log gives each execution's seconds, messages and bytes.

An empty program (one local addition) is timed the same way: what one execution costs whatever it
does (SPU's run setup, executable dispatch, the profiler's bookkeeping), the profile's
``latency.fixed_s_per_execution``. Each form's seconds have that constant taken out, so a model's
compute is the sum of its ops plus one constant.
"""

from __future__ import annotations

import numpy as np

from .calibration_forms import REFILL_MESSAGES, _is_matrix, form_program

PROCESS_REPEATS = 3  # back-to-back runs per size: the mean is the expected cost (refills included)
MATRIX_REPEATS = 2  # a large product runs seconds and pays no refill of its own: fewer runs
EMPTY_REPEATS = 8
TIMEOUT_S = 600.0
# elementwise and norm forms: 1,024 to 16,384 elements (a small GPT-2's softmax at T=64; larger ones
# extrapolate along the last segment)
PROCESS_SIZES = ((8, 128, 32), (32, 128, 32), (128, 128, 16))
# matrix products (cost/cheetah_packing.secret_product_work): the shapes of decoder LMs with T 8..128, d 32..512,
# V up to 2048 (attention [T x d_head] . [d_head x T] and [T x T] . [T x d_head], projections [T x d] . [d x 3d]
# and [d x d], FFN [T x d] . [d x 4d] and [T x 4d] . [4d x d], LM head [T x d] . [d x V]), plus the earlier
# sizes; the HELD_OUT ones are timed too, for benchmarks/spu_matmul_fit.py to check a fit that leaves them out
ATTENTION_SIZES = ((8, 32, 8), (16, 16, 16), (32, 32, 32), (64, 64, 64), (128, 64, 128), (128, 32, 128),
                   (64, 64, 32), (128, 128, 64), (32, 32, 16), (48, 48, 24))
PROJECTION_SIZES = ((8, 32, 96), (32, 64, 192), (64, 128, 384), (16, 256, 768), (64, 256, 768),
                    (8, 512, 1536), (32, 64, 64), (64, 256, 256), (128, 128, 128), (16, 512, 512))
FFN_SIZES = ((32, 64, 256), (64, 128, 512), (16, 256, 1024), (32, 256, 64), (64, 512, 128), (128, 1024, 256),
             (8, 2048, 512))
LM_HEAD_SIZES = ((64, 128, 1024), (16, 256, 2048), (32, 256, 2048), (24, 64, 512))
EARLIER_SIZES = ((2, 64, 64), (4, 64, 64), (16, 128, 32), (128, 64, 1024), (128, 1024, 64), (128, 512, 512),
                 (64, 1024, 256))
HELD_OUT_SIZES = ((24, 48, 24), (96, 32, 96), (24, 96, 288), (128, 64, 192), (24, 96, 96), (24, 96, 384),
                  (24, 384, 96), (16, 1024, 256), (24, 96, 512), (8, 512, 2048), (48, 96, 384))
PROCESS_MATMUL_SIZES = ATTENTION_SIZES + PROJECTION_SIZES + FFN_SIZES + LM_HEAD_SIZES + EARLIER_SIZES + HELD_OUT_SIZES
# batched (per-head attention) products: SPU runs them as a loop of single products (4 heads cost 4x one)
BATCHED_SIZES = ((2, 64, 64), (8, 32, 8), (32, 32, 32), (24, 48, 24), (64, 64, 64))


COMPUTE_NOTE = ("entries' seconds_points / seconds: mean seconds of back-to-back runs of each form between two "
                "party processes over brpc on loopback (as --run-private --engine spu runs), less "
                "fixed_s_per_execution; matrix products: the median of their refill-free runs, a line in the HE "
                "work SPU's cheetah runs for their shape (cost/cheetah_packing.secret_product_work)")


class _FormJob:
    """A compiled form as ``party.run_parties`` takes a program: the first input is the client's, the rest
    the owner's (who secret-shares what does not change what the execution computes)."""

    def __init__(self, executable, arrays: list[np.ndarray]):
        self.executable, self.arrays = executable, arrays

    def client_inputs(self, input_ids) -> list[np.ndarray]:
        return self.arrays[:1]

    def owner_inputs(self) -> list[np.ndarray]:
        return self.arrays[1:]


def _empty_function(x):
    return x + 1.0


def empty_job() -> _FormJob:
    """The empty program: one local addition on 16 elements (no message between the parties)."""
    from .lowering import compile_cached

    arrays = [np.full((4, 4), 0.5, np.float32)]
    return _FormJob(compile_cached(_empty_function, [a.shape for a in arrays], ["x0"], salt="empty"), arrays)


def sizes_of(name: str, sizes=PROCESS_SIZES, matmul_sizes=PROCESS_MATMUL_SIZES, batched_sizes=BATCHED_SIZES) -> tuple:
    """The (rows, length, width) a form is timed at."""
    if name == "matmul/batched":
        return batched_sizes
    return matmul_sizes if _is_matrix(name) else sizes


def form_cases(forms: list[str], sizes=PROCESS_SIZES, matmul_sizes=PROCESS_MATMUL_SIZES,
               batched_sizes=BATCHED_SIZES) -> tuple[list[dict], list[_FormJob]]:
    """(case records, compiled jobs) of every form at every size, in one order."""
    from .lowering import compile_cached

    cases, jobs = [], []
    for name in forms:
        for rows, length, width in sizes_of(name, sizes, matmul_sizes, batched_sizes):
            function, arrays, steps = form_program(name, rows, length, width)
            executable = compile_cached(function, [a.shape for a in arrays], [f"x{i}" for i in range(len(arrays))])
            cases.append({"form": name, "rows": rows, "length": length, "width": width, "steps": steps})
            jobs.append(_FormJob(executable, arrays))
    return cases, jobs


def refill_free_median(runs: list[tuple[float, int]]) -> tuple[float, int]:
    """(median seconds, runs left out) of (seconds, messages) runs of one size, leaving out those that paid a
    silent-OT refill: ``REFILL_MESSAGES`` more messages than the size's fewest."""
    fewest = min(messages for _, messages in runs)
    counted = [seconds for seconds, messages in runs if messages - fewest <= REFILL_MESSAGES]
    return float(np.median(counted)), len(runs) - len(counted)


def fold_runs(cases: list[dict], profiles: list[dict], fixed_s: float) -> list[dict]:
    """Each case with its runs' figures from the owner's profiles ([case 1's runs, case 2's runs, ...],
    ``case["repeats"]`` each): ``seconds`` the mean over the runs less the fixed cost of an execution.

    A matrix product's ``seconds`` are its own: the median of the runs that paid no silent-OT refill (a
    refill sends ``REFILL_MESSAGES`` more messages than the case's fewest and cost 1 to 4.7 s here, more than
    most products, in the first product a pair of processes ran; ``refill_runs`` counts the runs left out)."""
    if len(profiles) != sum(case["repeats"] for case in cases):
        raise ValueError(f"{len(profiles)} profiles for {sum(case['repeats'] for case in cases)} runs")
    start = 0
    for case in cases:
        own, start = profiles[start:start + case["repeats"]], start + case["repeats"]
        statistic = np.mean([r["seconds"] for r in own])
        if _is_matrix(case["form"]):
            statistic, case["refill_runs"] = refill_free_median([(r["seconds"], r["rounds"]) for r in own])
        case.update(runs_seconds=[round(r["seconds"], 5) for r in own],
                    runs_rounds=[r["rounds"] for r in own], runs_bytes=[r["bytes"] for r in own],
                    seconds=round(max(float(statistic) - fixed_s, 0.0), 5), timed_in="processes")
    return cases


def time_forms_in_processes(forms: list[str], sizes=PROCESS_SIZES, matmul_sizes=PROCESS_MATMUL_SIZES,
                            protocol: str = "cheetah", batched_sizes=BATCHED_SIZES) -> tuple[list[dict], dict]:
    """Time ``forms`` between two party processes over brpc; (timed cases, the fixed cost of one execution).

    One pair of processes runs the empty program ``EMPTY_REPEATS`` times, then every form at every size
    back to back (``PROCESS_REPEATS`` runs, matrix products ``MATRIX_REPEATS``); the fixed cost is the
    median of the empty runs."""
    from .party import run_parties

    cases, jobs = form_cases(forms, sizes, matmul_sizes, batched_sizes)
    empty = empty_job()
    programs = {f"empty{i}": empty for i in range(EMPTY_REPEATS)}
    for index, (case, job) in enumerate(zip(cases, jobs)):
        case["repeats"] = MATRIX_REPEATS if _is_matrix(case["form"]) else PROCESS_REPEATS
        # each run a job of its own (its inputs shared again, outside the timed execution)
        programs.update({f"form{index}.{run}": job for run in range(case["repeats"])})
    _, profiles = run_parties(programs, None, protocol=protocol, timeout_s=TIMEOUT_S)
    empty_runs = [p["seconds"] for p in profiles[1:1 + EMPTY_REPEATS]]
    fixed = float(np.median(empty_runs))
    fold_runs(cases, profiles[1 + EMPTY_REPEATS:], fixed)
    return cases, {"seconds": round(fixed, 6), "runs": [round(s, 6) for s in empty_runs]}


def calibrate_compute(forms: list[str], command: str) -> tuple[list[dict], dict]:
    """(timed cases for ``calibrate.refit``, the profile's ``latency`` compute fields) of ``forms`` timed in
    processes, each figure with where it was measured (CPU, cores, date, load at start and end, command)."""
    from aero_compile.targets.private.calibration import machine

    started = machine()
    cases, fixed = time_forms_in_processes(forms)
    ended = machine()["load_average_1min"]
    where = {**started, "load_average_1min_at_end": ended, "command": command}
    return cases, {
        "compute": COMPUTE_NOTE,
        "compute_source": {"kind": "measured", "forms": list(forms), "sizes": [list(s) for s in PROCESS_SIZES],
                           "batched_sizes": [list(s) for s in BATCHED_SIZES],
                           "matmul_sizes": [list(s) for s in PROCESS_MATMUL_SIZES],
                           "how": f"2 processes over brpc loopback (targets/spu/process_timing.py), {PROCESS_REPEATS} "
                                  f"back-to-back runs per size ({MATRIX_REPEATS} of a matrix product), mean seconds from the model "
                                  "owner's profiler", **where},
        "fixed_s_per_execution": fixed["seconds"],
        "fixed_source": {"kind": "measured", "runs": fixed["runs"], **where,
                         "how": f"median of {len(fixed['runs'])} executions of an empty program (one local addition) "
                                "between the same two processes: SPU's run setup and dispatch"},
        # the sockets' cost of each message is inside compute timed over brpc: the model must not add it again
        "loopback_s_per_message": 0.0,
        "loopback_note": "0: compute is timed between two processes over brpc loopback, so each message's socket "
                         "cost is inside it (forms not in compute_source.forms keep older simulator seconds, which "
                         "lack it); half a brpc ping-pong is measured by python -m aero_compile.targets.spu.link_timing",
    }


def merged_compute_source(profile: dict, latest: dict) -> dict:
    """``latest`` (this command's compute source) naming every form the profile now prices by process
    timings, the earlier commands' sources kept under ``earlier`` (a form re-timed takes its latest)."""
    recorded = profile.get("latency", {}).get("compute_source", {})
    timed = sorted({r["form"] for r in profile.get("timing_measurements", []) if r.get("timed_in") == "processes"})
    earlier = [*recorded.get("earlier", []), {k: v for k, v in recorded.items() if k != "earlier"}] \
        if "processes" in recorded.get("how", "") else []
    return {**latest, "forms": timed, "forms_this_command": latest["forms"], **({"earlier": earlier} if earlier else {})}
