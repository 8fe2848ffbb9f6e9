"""The search for activation sites on a traced, shape-propagated graph: ``find_sites`` (every candidate site, in
execution order, with its node) and ``unreplaced_calls`` (the activation calls inside blocks kept whole that cannot
be sites). Gates, calls on values not computed from the input, and the channel axis are decided here.
"""
from __future__ import annotations

import operator
from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx

from ablation.site_calls import Call
from ablation.site_kinds import check_kinds, kind_of
from ablation.site_layout import axis_after, site_width, spatial_dims
from ablation.sites import Site, assign_stages

_MULTIPLY = (operator.mul, operator.imul, torch.mul)


def find_sites(gm: fx.GraphModule, kinds: Sequence[str] | None = None) -> list[tuple[Site, fx.Node]]:
    """Every candidate site of a shape-propagated graph, in execution order, with its node.

    A site inside a block kept whole is an activation module that block calls once (its node is the block's; it is
    replaced by swapping the module); the calls there that are not (functions, shared modules) are
    ``unreplaced_calls``. ``kinds`` (default: every kind in ``SITE_KINDS``) limits which activations count.
    """
    wanted = set(check_kinds(kinds))
    live = _input_dependent(gm.graph)
    inner, _ = _inner_calls(gm, live, wanted)
    found: list[tuple[fx.Node, str, Call | None]] = []
    for n in gm.graph.nodes:
        kind = kind_of(gm, n) if n in live else None
        if kind in wanted and not _is_gate(n, live):
            found.append((n, kind, None))
        found.extend((n, c.kind, c) for c in inner.get(n, ()))
    paths = _paths([c.path if c else _base_path(n) for n, _, c in found])
    axes = [c.channel_dim if c else _channel_dim(gm, n) for n, _, c in found]
    shapes = [c.shape if c else tuple(_shape(n)) for n, _, c in found]
    stages = assign_stages([p for p, _ in paths], [spatial_dims(sh, a) for sh, a in zip(shapes, axes)])
    out = []
    for i, ((n, kind, call), (path, _), stage, axis, shape) in enumerate(zip(found, paths, stages, axes, shapes)):
        block, block_type = _inner_block(gm, call.path) if call else _block(n)
        source = str(n.target) if call else _source(n.args[0])
        site = Site(i, path, site_width(shape, path, axis), spatial_dims(shape, axis), stage, "", source, block,
                    block_type, False if call else _inplace(gm, n), kind, axis)
        out.append((site, n))
    return out


def unreplaced_calls(gm: fx.GraphModule, kinds: Sequence[str] | None = None) -> list[Call]:
    """The activation calls (of ``kinds``) inside blocks kept whole that are no site: functional calls, and modules
    called more than once (one module cannot become several). ``propagate_shapes`` must have run."""
    live = _input_dependent(gm.graph)
    return _inner_calls(gm, live, set(check_kinds(kinds)))[1]


def _inner_calls(gm: fx.GraphModule, live: set[fx.Node], wanted: set[str]) -> tuple[dict[fx.Node, list[Call]], list[Call]]:
    """The calls made inside leaf modules, split into sites (per node) and calls left unreplaced."""
    made = [(n, c) for n in gm.graph.nodes if n in live for c in n.meta.get("activation_calls", ())]
    uses = Counter(c.path for _, c in made if c.module)
    sites: dict[fx.Node, list[Call]] = {}
    left = []
    for n, c in made:
        if c.kind not in wanted or c.gate:
            continue
        if c.module and uses[c.path] == 1:
            sites.setdefault(n, []).append(c)
        else:
            left.append(c)
    return sites, left


def _inner_block(gm: fx.GraphModule, path: str) -> tuple[str, str]:
    parent = path.rpartition(".")[0]
    return parent, type(gm.get_submodule(parent)).__name__


def _is_gate(n: fx.Node, live: set[fx.Node]) -> bool:
    """Whether ``n``'s output scales another input-dependent tensor that it did not produce.

    Squeeze-excite's ``scale * x`` broadcasts a pooled gate over ``x``; a GLU multiplies two
    branches. The tensor that is scaled (``x``, from which the gate was computed) is no gate.
    """
    for user in n.users:
        if not _is_multiply(user):
            continue
        others = [a for a in user.args if isinstance(a, fx.Node) and a is not n and a in live]
        shape = _shape_of(user)
        if shape is not None and any(_shape_of(o) == shape and not _depends_on(o, n) for o in others):
            return True
    return False


def _is_multiply(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in _MULTIPLY) or (n.op == "call_method" and n.target in ("mul", "mul_"))


def _depends_on(node: fx.Node, ancestor: fx.Node) -> bool:
    """Whether ``ancestor`` is among the nodes ``node`` is computed from."""
    seen, stack = set(), [node]
    while stack:
        cur = stack.pop()
        if cur is ancestor:
            return True
        if cur not in seen:
            seen.add(cur)
            stack.extend(cur.all_input_nodes)
    return False


def _channel_dim(gm: fx.GraphModule, n: fx.Node) -> int:
    """The channel axis of the activation's input: last after a Linear or LayerNorm (ViT, Swin and
    ConvNeXt MLPs run on (N, ..., C)), else 1. Walks back through shape-keeping ops to find out."""
    ndim = len(_shape_of(n) or ())
    cur = n.args[0] if n.args else None
    for _ in range(8):
        if not isinstance(cur, fx.Node) or cur.op not in ("call_module", "call_function", "call_method"):
            break
        op = gm.get_submodule(cur.target) if cur.op == "call_module" else cur.target
        if (axis := axis_after(op, ndim)) is not None:
            return axis
        cur = next((a for a in cur.args if isinstance(a, fx.Node)), None)
    return 1


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a model input; others (e.g. Swin-V2's position-bias MLP on a buffer) are not sites."""
    live: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
            live.add(n)
    return live


def _paths(bases: list[str]) -> list[tuple[str, int]]:
    """``path`` per site, with ``#k`` when the same module (or op in the same scope) is called twice."""
    totals = Counter(bases)
    seen: dict[str, int] = {}
    out = []
    for b in bases:
        seen[b] = seen.get(b, 0) + 1
        out.append((f"{b}#{seen[b]}" if totals[b] > 1 else b, seen[b]))
    return out


def _base_path(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    name = n.target if isinstance(n.target, str) else n.target.__name__
    scope = _scope(n)
    return f"{scope}.{name}" if scope else name


def _scope(n: fx.Node) -> str:
    """Path of the innermost module whose forward made this call ('' for the root)."""
    stack = list((n.meta.get("nn_module_stack") or {}).values())
    if n.op == "call_module" and stack:
        stack = stack[:-1]  # the last entry is the called module itself
    return stack[-1][0] if stack else ""


def _block(n: fx.Node) -> tuple[str, str]:
    stack = list((n.meta.get("nn_module_stack") or {}).values())
    if n.op == "call_module" and stack:
        stack = stack[:-1]
    if not stack:
        return "", ""
    path, cls = stack[-1]
    return path, getattr(cls, "__name__", str(cls))


def _source(arg: Any) -> str:
    if not isinstance(arg, fx.Node):
        return ""
    if arg.op == "call_module":
        return str(arg.target)
    return arg.target if isinstance(arg.target, str) else getattr(arg.target, "__name__", str(arg.target))


def _inplace(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return bool(getattr(gm.get_submodule(n.target), "inplace", False))
    if n.op == "call_method":
        return n.target.endswith("_")
    if n.target in (F.relu_, torch.relu_):
        return True
    return bool(n.kwargs.get("inplace", n.args[1] if len(n.args) > 1 else False))


def _shape_of(n: fx.Node) -> tuple[int, ...] | None:
    """``n``'s output shape, or None where it is not one tensor."""
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _shape(n: fx.Node) -> torch.Size:
    meta = n.meta.get("tensor_meta")
    if meta is None:
        raise ValueError(f"node {n.name} has no shape: run propagate_shapes first")
    return meta.shape
