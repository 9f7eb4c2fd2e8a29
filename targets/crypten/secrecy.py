"""Who knows each value of the graph: everyone (public), the model owner, or nobody (secret-shared).

Use ``value_origins(gm)`` before lowering a graph to MPC: only SECRET values need a protocol.

* PUBLIC: shapes (``sym_size``), constants built from them (``arange``, masks), buffers (causal masks,
  rotary frequencies: part of the architecture) and anything computed from those alone. Both parties
  compute them in plaintext; an op between a secret and a public value is local (no communication).
* OWNER: parameters and anything computed from parameters and public values only (``wpe[arange]``,
  ``1 / alpha`` of scale-ffn). The model owner computes them in plaintext once and secret-shares the
  result, so under MPC they cost nothing at inference time.
* SECRET: anything that depends on the client's ``input_ids``.

The cost analyzer should cost non-SECRET nodes at zero, as the lowering runs them in plaintext.
"""

from __future__ import annotations

from enum import Enum

import torch.fx as fx

from aero_compile.ops import OpKind, classify_node


class Origin(str, Enum):
    """Who can compute a value in plaintext."""

    PUBLIC = "public"
    OWNER = "owner"
    SECRET = "secret"


# A value's origin is the "most secret" of its inputs' origins.
_RANK = {Origin.PUBLIC: 0, Origin.OWNER: 1, Origin.SECRET: 2}


def parameter_names(gm: fx.GraphModule) -> set[str]:
    """Qualified names of the model's parameters, tied ones (lm_head = wte) included."""
    return {name for name, _ in gm.named_parameters(remove_duplicate=False)}


def value_origins(gm: fx.GraphModule) -> dict[fx.Node, Origin]:
    """The origin of every node's value, in graph order (placeholders are the client's input)."""
    params = parameter_names(gm)
    origins: dict[fx.Node, Origin] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            origins[node] = Origin.SECRET
        elif node.op == "get_attr":
            origins[node] = Origin.OWNER if str(node.target) in params else Origin.PUBLIC
        elif node.op == "output":
            continue
        elif classify_node(gm, node) is OpKind.CONSTANT:
            # sym_size/arange/ones...: built from shapes, which are public even when the data is not.
            origins[node] = Origin.PUBLIC
        else:
            inputs = [origins[arg] for arg in node.all_input_nodes if arg in origins]
            origins[node] = max(inputs, key=_RANK.__getitem__, default=Origin.PUBLIC)
    return origins
