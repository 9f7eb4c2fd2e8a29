"""The package list, derived (pyproject.toml holds everything else): a new subpackage ships unnamed.

passes/ and targets/ sit at the top of the repository (they show the architecture) but ship inside the
one import package, as aero_compile.passes and aero_compile.targets (package-dir in pyproject.toml), so
nothing generic named "passes" lands at the top of site-packages.
"""

from setuptools import find_packages, setup

MOUNTED = ("passes", "targets")  # folder -> aero_compile.<folder>

packages = find_packages(include=["aero_compile", "aero_compile.*"])
for folder in MOUNTED:
    packages += [f"aero_compile.{name}" for name in find_packages(include=[folder, f"{folder}.*"])]

setup(packages=packages)
