"""The built wheel, installed into a fresh virtual environment, runs the main job and both engines.

Builds the wheel from this checkout (no build isolation: offline), checks that every package of the
tree ships in it, installs it as install.sh installs (the pinned CPU torch first, then SPU and the
wheel with its dependencies, then CrypTen without its dead dependencies) into a venv that does not see
the development environment (no system site packages, so no editable finder; no PYTHONPATH), and runs
the installed ``aero-compile`` from a directory outside the checkout. Minutes (pip's cache helps):
marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MOUNTED = {"aero_compile": "aero_compile", "passes": "aero_compile/passes", "targets": "aero_compile/targets"}
PINNED_TORCH = "torch==2.13.0"  # as install.sh
SPU = "spu==0.9.5"
CRYPTEN = "crypten==0.4.1"

pytestmark = pytest.mark.slow


def _run(command, cwd, env, timeout=900):
    start = time.monotonic()
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, command))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(f"{time.monotonic() - start:7.1f} s  {' '.join(Path(str(c)).name for c in command[:8])}")  # with -s
    return proc


def _tree_packages() -> set[str]:
    """Every package folder of the checkout, as the path it must have inside the wheel."""
    found = set()
    for top, installed in MOUNTED.items():
        for init in (REPO / top).rglob("__init__.py"):
            found.add(str(Path(installed) / init.parent.relative_to(REPO / top)).rstrip("/."))
    return found


def _source_copy(destination: Path) -> Path:
    """The checkout's files as a clean clone plus uncommitted work has them (no build/, no egg-info)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _clean_env(bin_dir: Path) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    env = _clean_env(bin_dir)
    # --no-compile: no bytecode for all of torch at install time (minutes of CPU); what runs compiles itself
    pip = [python, "-m", "pip", "install", "-q", "--no-compile"]
    # The build runs in the fresh venv too: its setuptools, not whatever the development venv holds
    # (setuptools >= 70.1 builds wheels without the separate 'wheel' package).
    _run([*pip, "setuptools>=70.1"], cwd=tmp_path, env=env)
    wheels = tmp_path / "wheels"
    source = _source_copy(tmp_path / "source")
    _run([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
         cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("aero_compile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {str(Path(name).parent) for name in names if name.endswith("__init__.py")}
    assert _tree_packages() - shipped == set()
    assert {"aero_compile/targets/spu", "aero_compile/targets/private"} <= shipped
    assert not any(name.startswith(("passes/", "targets/")) for name in names)  # nothing generic at the top
    assert "aero_compile/cost/data/crypten.json" in names

    _run([*pip, PINNED_TORCH], cwd=tmp_path, env=env)  # the CPU wheel first, as install.sh
    _run([*pip, SPU, wheel], cwd=tmp_path, env=env)
    _run([*pip, "--no-deps", CRYPTEN], cwd=tmp_path, env=env)

    work = tmp_path / "outside"
    work.mkdir()
    where = _run([python, "-c", "import aero_compile.targets.private as p; print(p.__file__)"], cwd=work, env=env)
    assert str(env_dir) in where.stdout and str(REPO) not in where.stdout  # the wheel, not the checkout

    cli = bin_dir / "aero-compile"
    _run([cli, "gpt2-tiny", "--report-json", "main.json", "-o", "model.onnx"], cwd=work, env=env)  # main job + ONNX
    assert json.loads((work / "main.json").read_text())["savings"]
    assert (work / "model.onnx").stat().st_size > 0

    # one timed pass a graph (--private-repetitions 1): bytes are what is checked, the same on every pass
    _run([cli, "gpt2-tiny", "--no-cost", "--run-private", "--private-seq-len", "4", "--private-repetitions", "1",
          "--report-json", "crypten.json"], cwd=work, env=env)
    measured = json.loads((work / "crypten.json").read_text())["measured"]
    assert measured["after"]["bytes"] < measured["before"]["bytes"]

    run = _run([cli, "gpt2-tiny", "--no-cost", "--run-private", "--engine", "spu", "--spu-protocol", "semi2k",
                "--private-seq-len", "4", "--private-repetitions", "1", "--report-json", "spu.json"], cwd=work, env=env)
    measured = json.loads((work / "spu.json").read_text())["measured"]
    assert measured["after"]["engine"] == "spu" and measured["after"]["bytes"] < measured["before"]["bytes"]
    assert "measured under SPU semi2k" in run.stdout
