"""Helper for tests that start parties as separate CLI processes (not a test file)."""

import subprocess


def outputs_of(processes: dict[str, subprocess.Popen], timeout_s: float) -> dict[str, str]:
    """Each process's stdout once it ended with status 0 (an assertion naming the party and its stderr
    tail otherwise); every process is killed on the way out, so none outlives a failed test."""
    outputs = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=timeout_s)
            assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
            outputs[name] = stdout
    finally:
        for process in processes.values():
            process.kill()
    return outputs
