"""Which CPU this process runs on, and whether a profile's compute seconds were timed on the same kind.

A profile's compute seconds (``seconds`` per entry) are this machine's only if they were timed here: the
calibration records the CPU model and the cores it could use (``targets/private/calibration.machine``).
``compute_mismatch`` names the difference, so a report read on another machine says its latency is the
calibration machine's, and how to time it here.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)  # read once: the analyzer asks on every analysis
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        return cpu


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compute_timed_on(profile_data: dict) -> dict | None:
    """``{"cpu", "cores"}`` of the latest compute calibration a profile records (CrypTen: ``source.compute``;
    SPU: ``latency.compute_source``); None for a profile whose seconds were not timed (a paper's reference)."""
    for record in ((profile_data.get("source") or {}).get("compute"),
                   (profile_data.get("latency") or {}).get("compute_source")):
        if isinstance(record, dict) and record.get("cpu"):
            return {"cpu": record["cpu"], "cores": record.get("cores")}
    return None


def compute_mismatch(timed: dict | None) -> str | None:
    """One sentence when this machine is not the kind ``timed`` (``compute_timed_on``) names, else None."""
    if timed is None:
        return None
    here = {"cpu": cpu_model(), "cores": usable_cores()}
    if timed["cpu"] == here["cpu"] and timed["cores"] in (None, here["cores"]):
        return None
    return (f"compute seconds were timed on {timed['cpu']} ({timed['cores']} cores), this machine is {here['cpu']} "
            f"({here['cores']} cores): latency is the calibration machine's")
