"""The shared party launcher's start methods: graphs travel to a non-forked party unchanged, and fork is
refused once jax (SPU) is loaded. The faults it reports are tested through the engines
(test_party_faults.py for CrypTen, test_spu_parties.py for SPU)."""

import pickle
import types

import pytest
import torch

from aero_compile.capturing import example_input, run_graph
from aero_compile.errors import AeroError
from aero_compile.ops import classify_node
from aero_compile.targets.private.portable import PortableGraphs
from aero_compile.targets.private.processes import Party, launch_parties


def test_graphs_reach_a_party_with_their_nodes_metadata_and_parameters(captured):
    # the rewritten graphs make the same trip in every CrypTen test (test_crypten_private.py checks their runs)
    graphs = {"before": captured("gpt2-tiny")}
    back = pickle.loads(pickle.dumps(PortableGraphs(graphs))).graphs
    for name, gm in graphs.items():
        copy = back[name]
        assert [n.name for n in copy.graph.nodes] == [n.name for n in gm.graph.nodes]
        assert [classify_node(copy, n) for n in copy.graph.nodes] == [classify_node(gm, n) for n in gm.graph.nodes]
        assert all(n.meta.get("nn_module_stack") == o.meta.get("nn_module_stack")
                   for n, o in zip(copy.graph.nodes, gm.graph.nodes))
        assert sorted((k, type(v)) for k, v in copy.named_parameters()) == sorted((k, type(v)) for k, v in gm.named_parameters())
        ids = example_input(gm, seq_len=8)
        assert torch.equal(run_graph(copy, ids), run_graph(gm, ids))


def test_fork_is_refused_once_jax_is_loaded(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "jax", types.ModuleType("jax"))
    with pytest.raises(AeroError, match="cannot fork the parties: jax is loaded"):
        launch_parties([Party("client", print)], timeout_s=5, start_method="fork")
