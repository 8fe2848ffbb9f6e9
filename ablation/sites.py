"""Activation call sites of a model, found with torch.fx and shape propagation.

A site is one CALL of a ReLU-like op, not a module instance: torchvision's ResNet blocks call
one ``self.relu`` several times (at two widths in Bottleneck), and each call is its own site.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

#: kind -> (module classes, functions, tensor method names) that count as activation sites.
SITE_KINDS: dict[str, tuple[tuple[type, ...], tuple[Any, ...], tuple[str, ...]]] = {
    "relu": ((nn.ReLU, nn.ReLU6), (F.relu, F.relu_, torch.relu, torch.relu_, F.relu6), ("relu", "relu_")),
    "swish": ((nn.SiLU, nn.Hardswish), (F.silu, F.hardswish), ()),
    "gelu": ((nn.GELU,), (F.gelu,), ()),
}

_STAGE_NAME = re.compile(r"^(layer|stage|denseblock|block)(\d+)$")


@dataclass(frozen=True)
class Site:
    """One activation call site.

    ``index``: position among all candidate sites in execution order; ``path``: module path of the
    original call, ``#k`` (1-based) when that module is called several times; ``width``: channels
    (dim 1 of the output); ``spatial``: the output's trailing dims; ``stage``: see ``assign_stages``;
    ``target``: module path of the activation in the changed model; ``source``: what produced the
    input (module path or op name); ``block``/``block_type``: the enclosing module and its class.
    """

    index: int
    path: str
    width: int
    spatial: tuple[int, ...]
    stage: int
    target: str
    source: str = ""
    block: str = ""
    block_type: str = ""
    inplace: bool = False

    def as_row(self) -> list:
        """A JSON-friendly row: index, path, width, spatial, stage, target."""
        return [self.index, self.path, self.width, list(self.spatial), self.stage, self.target]


class SiteTracer(fx.Tracer):
    """The default fx tracer, plus leaves for modules whose Python branches read ``self.training``."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _extra_leaves()) or super().is_leaf_module(m, qualname)


def _extra_leaves() -> tuple[type, ...]:
    # StochasticDepth returns its input unchanged when not training: tracing through it would
    # freeze the training-mode branch into the graph.
    from torchvision.ops import StochasticDepth

    return (StochasticDepth,)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a model fx cannot trace gets a ValueError saying why."""
    try:
        graph = SiteTracer().trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, RuntimeError ...)
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx, so its call sites cannot be found: {e}") from e
    return fx.GraphModule(model, graph, type(model).__name__)


def propagate_shapes(gm: fx.GraphModule, input_shape: Sequence[int]) -> None:
    """Annotate every node with its output shape, on fake tensors (no real compute, any size)."""
    ref = next(iter(gm.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    was_training = gm.training
    gm.eval()  # BatchNorm on a batch of one is only legal in eval mode
    try:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        ShapeProp(gm, fake_mode=fake).propagate(torch.empty(tuple(input_shape), device=device, dtype=dtype))
    finally:
        gm.train(was_training)


def find_sites(gm: fx.GraphModule, kinds: Sequence[str] = ("relu",)) -> list[tuple[Site, fx.Node]]:
    """Every candidate site of a shape-propagated graph, in execution order, with its node."""
    matchers = [_kind(k) for k in kinds]
    live = _input_dependent(gm.graph)
    nodes = [n for n in gm.graph.nodes if n in live and any(_matches(gm, n, m) for m in matchers)]
    paths = _paths(gm, nodes)
    stages = assign_stages([p for p, _ in paths], [_spatial(n) for n in nodes])
    out = []
    for i, (n, (path, count), stage) in enumerate(zip(nodes, paths, stages)):
        block, block_type = _block(n)
        site = Site(i, path, _width(n, path), _spatial(n), stage, "", _source(n.args[0]), block, block_type, _inplace(gm, n))
        out.append((site, n))
    return out


def _kind(name: str):
    try:
        return SITE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown site kind {name!r}; valid choices: {', '.join(sorted(SITE_KINDS))}") from None


def _matches(gm: fx.GraphModule, n: fx.Node, matcher) -> bool:
    modules, functions, methods = matcher
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), modules)
    if n.op == "call_function":
        return any(n.target is f for f in functions)
    return n.op == "call_method" and n.target in methods


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a model input; others (e.g. Swin-V2's position-bias MLP on a buffer) are not sites."""
    live: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
            live.add(n)
    return live


def _paths(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[tuple[str, int]]:
    """``path`` per node, with ``#k`` when the same module (or op in the same scope) is called twice."""
    bases = [_base_path(n) for n in nodes]
    totals = {b: bases.count(b) for b in bases}
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


def _spatial(n: fx.Node) -> tuple[int, ...]:
    return tuple(int(s) for s in _shape(n)[2:])


def _width(n: fx.Node, path: str) -> int:
    shape = _shape(n)
    if len(shape) < 2:
        raise ValueError(f"site {path} has output shape {tuple(shape)}: an activation site needs (N, C, ...)")
    return int(shape[1])


def _shape(n: fx.Node) -> torch.Size:
    meta = n.meta.get("tensor_meta")
    if meta is None:
        raise ValueError(f"node {n.name} has no shape: run propagate_shapes first")
    return meta.shape


def assign_stages(paths: Sequence[str], spatials: Sequence[tuple[int, ...]]) -> list[int]:
    """Stage of each site, in execution order.

    Named rule, when some path has a component ``layerN``/``stageN``/``blockN``/``denseblockN``
    (ResNet layer1..4, ShuffleNetV2 stage2..4, RegNet block1..4, DenseNet denseblock1..4): the stage
    is N of the latest such component seen; sites before the first (the stem) are stage 0, and
    sites after one (transitions, heads) stay in it. Otherwise, resolution rule: a stage is a
    maximal run of sites with the same spatial size, numbered from 1; pooled sites (no spatial
    dims, or all ones: SE gates, classifier MLPs) stay in the current stage.
    """
    named = [_named_stage(p) for p in paths]
    if any(s is not None for s in named):
        return _running(named)
    stages, current, last = [], 0, None
    for sp in spatials:
        pooled = all(d == 1 for d in sp)
        if not pooled and sp != last:
            current, last = current + 1, sp
        stages.append(max(current, 1))
    return stages


def _named_stage(path: str) -> int | None:
    for part in path.split("#")[0].split("."):
        m = _STAGE_NAME.match(part)
        if m:
            return int(m.group(2))
    return None


def _running(named: list[int | None]) -> list[int]:
    out, current = [], 0
    for s in named:
        current = s if s is not None else current
        out.append(current)
    return out
