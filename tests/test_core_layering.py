"""The import graph of our own modules: no cycles, and no module importing from a layer above it.

Every ``import`` and ``from ... import`` in aero_compile/, passes/ and targets/ counts, the ones inside
functions too (a lazy import still ties two modules together). Imports by name through a registry
(``targets.EMITTERS``, ``targets.CALIBRATORS``, ``cli.EXTENSIONS``: ``importlib.import_module`` of a
string) are late binding by design and are not edges.

The layers follow the pipeline (DESIGN.md), lowest first:

* core: errors, records, ops, shapes, secrecy, blocks, capture, loading, options (what every stage asks);
* cost: the analyzer (reads the graph and the profiles, never a pass or a backend);
* passes: the pass registry, the passes, the pass manager and the pipeline report (which prices what is
  left with the analyzer's features);
* targets: the backends (they may read cost profiles and run passes' helpers);
* top: the package's lazy front door, the CLI and its extensions, training, and maintainer tools.

Run ``python tests/test_core_layering.py`` to print the graph's cycles and upward edges.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"aero_compile": ROOT / "aero_compile", "aero_compile.passes": ROOT / "passes",
           "aero_compile.targets": ROOT / "targets"}

LAYERS = {
    "core": ("aero_compile.errors", "aero_compile.records", "aero_compile.fileio", "aero_compile.outputs",
             "aero_compile.ops", "aero_compile.shapes", "aero_compile.secrecy", "aero_compile.graph_info",
             "aero_compile.pass_options", "aero_compile.pipeline_text", "aero_compile.blocks",
             "aero_compile.models", "aero_compile.loader", "aero_compile.capturing", "aero_compile.calibration"),
    "cost": ("aero_compile.cost", "aero_compile.network"),
    "passes": ("aero_compile.report", "aero_compile.pass_registry", "aero_compile.passes", "aero_compile.pass_manager"),
    "targets": ("aero_compile.targets",),
    "top": ("aero_compile", "aero_compile.__main__", "aero_compile.cli", "aero_compile.training", "aero_compile.tools"),
}
ORDER = list(LAYERS)
# A module with one of these names extends the CLI, wherever it lives: it belongs to the top layer.
# (targets/private/options.py is the private layer's CLI extension: it is listed in cli.EXTENSIONS.)
TOP_NAMES = ("cli", "cli_extension", "__main__", "options")

# Deliberate exceptions, each with its reason. An entry whose import is gone fails the test: delete it then.
UPWARD_ALLOWED = {
    # The "corpus" calibration source tokenizes the training corpus as `train` does. These four modules
    # import only errors/fileio (data helpers that live with training), so no cycle runs through them.
    ("aero_compile.calibration", "aero_compile.training.config"): "corpus calibration: the cache directory",
    ("aero_compile.calibration", "aero_compile.training.corpus"): "corpus calibration: the corpus",
    ("aero_compile.calibration", "aero_compile.training.data"): "corpus calibration: tokenizing documents",
    ("aero_compile.calibration", "aero_compile.training.tokenizer"): "corpus calibration: the tokenizer",
}
CYCLE_EDGES_ALLOWED = {
    # training/config.py imports training/distill.py (for DistillWeights), which imports the model, which
    # imports config: removed when DistillWeights moves into training/config.py (the conversion work).
    ("aero_compile.training.config", "aero_compile.training.distill"): "DistillWeights still lives in distill.py",
}


def our_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


@functools.lru_cache(maxsize=1)
def import_graph() -> nx.DiGraph:
    """Module -> module it imports (the deepest of our modules the import names), with the line."""
    modules = our_modules()

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = nx.DiGraph()
    for module, path in modules.items():
        graph.add_node(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                # ``from pkg import submodule`` imports the submodule; ``from pkg import name``, pkg itself
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for name in names:
                target = ours(name) if name.split(".")[0] == "aero_compile" else None
                if target and target != module:
                    graph.add_edge(module, target, line=f"{path.relative_to(ROOT)}:{node.lineno}")
    return graph


def layer_of(module: str) -> str:
    if module.rpartition(".")[2] in TOP_NAMES:
        return "top"
    best = max(((prefix, layer) for layer, prefixes in LAYERS.items() for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=lambda item: len(item[0]), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return best[1]


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    pruned = graph.copy()
    pruned.remove_edges_from(edge for edge in CYCLE_EDGES_ALLOWED if pruned.has_edge(*edge))
    return [sorted(component) for component in nx.strongly_connected_components(pruned) if len(component) > 1]


def upward_edges(graph: nx.DiGraph) -> list[str]:
    return [f"{graph.edges[a, b]['line']}: {a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
            for a, b in graph.edges if ORDER.index(layer_of(b)) > ORDER.index(layer_of(a))
            and (a, b) not in UPWARD_ALLOWED]


def test_the_walk_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert graph.has_edge("aero_compile.pass_manager", "aero_compile.passes")  # from . import passes
    assert graph.has_edge("aero_compile.report", "aero_compile.cost.features")  # inside a function
    assert graph.has_edge("aero_compile.targets.crypten.dispatch", "aero_compile.targets.crypten.protocols")
    assert not graph.has_edge("aero_compile.targets.crypten.dispatch", "aero_compile.targets.crypten")


def test_no_import_cycles_among_our_modules():
    graph = import_graph()
    found = cycles(graph)
    details = [" -> ".join(cycle + [cycle[0]]) for component in found
               for cycle in [next(nx.simple_cycles(graph.subgraph(component)))]]
    assert not found, "import cycles:\n" + "\n".join(details)


def test_no_module_imports_from_a_layer_above_it():
    upward = upward_edges(import_graph())
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_every_allowed_exception_is_still_needed():
    graph = import_graph()
    stale = [edge for edge in [*UPWARD_ALLOWED, *CYCLE_EDGES_ALLOWED] if not graph.has_edge(*edge)]
    assert not stale, f"these imports are gone; delete their exceptions: {stale}"
    still_cyclic = [edge for edge in CYCLE_EDGES_ALLOWED
                    if nx.has_path(graph, edge[1], edge[0])]
    assert still_cyclic == list(CYCLE_EDGES_ALLOWED), "an allowed cycle edge closes no cycle any more; delete it"


if __name__ == "__main__":
    graph = import_graph()
    for component in cycles(graph):
        print("cycle:", ", ".join(component))
    print("\n".join(upward_edges(graph)) or "no upward imports")
