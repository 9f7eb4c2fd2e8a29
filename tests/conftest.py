"""Shared fixtures: captured graphs are cached per session (capture is the slow part)."""

import warnings

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def captured():
    """captured(name) -> a GraphModule for a built-in model, captured once per test session."""
    import aero_compile as ac

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = ac.capture(name)
        return cache[name]

    return get
