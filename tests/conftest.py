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


@pytest.fixture(scope="session")
def rewritten_all(captured):
    """rewritten_all(name) -> `--passes all` on a built-in's captured graph, run once per test session (the
    pipeline took ~1 s a model, in a dozen modules). Shared: read it, never modify it (copy it first)."""
    from aero_compile.pass_manager import PassManager

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = PassManager.from_pipeline("all").run(captured(name)).graph_module
        return cache[name]

    return get


def pytest_configure(config):
    config.addinivalue_line("markers", "runs_last: run after every other test (it checks what they wrote)")


def pytest_collection_modifyitems(items):
    """Tests marked runs_last (the fresh-interpreter reload of every .pt2 the suite wrote) go last."""
    last = [item for item in items if item.get_closest_marker("runs_last")]
    items[:] = [item for item in items if not item.get_closest_marker("runs_last")] + last
