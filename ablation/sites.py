"""Activation call sites of a model, found with torch.fx and shape propagation.

A site is one CALL of the model's own activation (ReLU, GELU, SiLU, ... as a module, a function
or a tensor method), not a module instance: torchvision's ResNet blocks call one ``self.relu``
several times (at two widths in Bottleneck), and each call is its own site. Gates (an
activation whose output scales another tensor, as in squeeze-excite) are never sites.
"""
from __future__ import annotations

import operator
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

#: kind -> (module classes, functions, tensor method names) that count as activation sites. The
#: first kind that matches names a call (relu6 before hardtanh: nn.ReLU6 subclasses nn.Hardtanh).
#: Sigmoid, hard-sigmoid, tanh and softmax are left out: in classifiers they gate or normalise.
SITE_KINDS: dict[str, tuple[tuple[type, ...], tuple[Any, ...], tuple[str, ...]]] = {
    "relu": ((nn.ReLU,), (F.relu, F.relu_, torch.relu, torch.relu_), ("relu", "relu_")),
    "relu6": ((nn.ReLU6,), (F.relu6,), ()),
    "hardtanh": ((nn.Hardtanh,), (F.hardtanh, F.hardtanh_), ()),
    "leaky_relu": ((nn.LeakyReLU,), (F.leaky_relu, F.leaky_relu_), ()),
    "prelu": ((nn.PReLU,), (F.prelu, torch.prelu), ()),
    "elu": ((nn.ELU,), (F.elu, F.elu_), ()),
    "selu": ((nn.SELU,), (F.selu, F.selu_, torch.selu, torch.selu_), ()),
    "celu": ((nn.CELU,), (F.celu, F.celu_), ()),
    "gelu": ((nn.GELU,), (F.gelu,), ()),
    "silu": ((nn.SiLU,), (F.silu,), ()),
    "hardswish": ((nn.Hardswish,), (F.hardswish,), ()),
    "mish": ((nn.Mish,), (F.mish,), ()),
}

#: Calls that decide which axis holds the channels: (modules, functions) with features last, or at dim 1.
_LAST_AXIS = ((nn.Linear, nn.LayerNorm), (F.linear, F.layer_norm))
_AXIS_ONE = ((nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm), (F.conv1d, F.conv2d, F.conv3d, F.batch_norm))
_MULTIPLY = (operator.mul, operator.imul, torch.mul)

_STAGE_NAME = re.compile(r"^(layer|stage|denseblock|block)(\d+)$")


@dataclass(frozen=True)
class Site:
    """One activation call site.

    ``index``: position among all candidate sites in execution order; ``path``: module path of the
    original call, ``#k`` (1-based) when that module is called several times; ``width``: channels
    (the output's size on ``channel_dim``: 1, or the last dim after a Linear/LayerNorm);
    ``spatial``: the output's other non-batch dims; ``stage``: see ``assign_stages``; ``target``:
    module path of the activation in the changed model; ``source``: what produced the input
    (module path or op name); ``block``/``block_type``: the enclosing module and its class;
    ``replaced``: the ``SITE_KINDS`` name of the activation the site had.
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
    replaced: str = ""
    channel_dim: int = 1

    def as_row(self) -> list:
        """A JSON-friendly row: index, path, width, spatial, stage, target, replaced."""
        return [self.index, self.path, self.width, list(self.spatial), self.stage, self.target, self.replaced]


def describe_replaced(sites: Sequence[Site]) -> str:
    """The kinds ``sites`` replaced, most common first: ``"relu x16"``, ``"gelu x12, silu x3"``."""
    counts = Counter(s.replaced for s in sites)
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def add_site_kind(kind: str, *, classes: tuple[type, ...] = (), functions: tuple[Any, ...] = ()) -> None:
    """Count more activation modules and functions as sites of ``kind`` (a library's own GELU, Swish ...).

    Their modules become fx leaves and their functions are autowrapped, so each call stays one node."""
    own_classes, own_functions, methods = SITE_KINDS[kind]
    SITE_KINDS[kind] = (own_classes + tuple(c for c in classes if c not in own_classes),
                        own_functions + tuple(f for f in functions if f not in own_functions), methods)
    _AUTOWRAPPED.extend(f for f in functions if f not in _AUTOWRAPPED)


#: Python functions added by ``add_site_kind``: fx would trace into them, so they are autowrapped (one node a call).
_AUTOWRAPPED: list[Any] = []


class SiteTracer(fx.Tracer):
    """The default fx tracer, plus leaves for activation modules of any library (a call stays one node) and for
    modules whose Python branches read ``self.training``; timm's no-trace modules and functions stay whole."""

    def __init__(self, *, whole_blocks: bool = False) -> None:
        from ablation.timm_models import notrace

        modules, functions = notrace(whole_blocks=whole_blocks)
        self.leaves = _extra_leaves() + modules + tuple(c for classes, _, _ in SITE_KINDS.values() for c in classes)
        super().__init__(autowrap_functions=functions + tuple(_AUTOWRAPPED))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _extra_leaves() -> tuple[type, ...]:
    # StochasticDepth returns its input unchanged when not training: tracing through it would
    # freeze the training-mode branch into the graph.
    from torchvision.ops import StochasticDepth

    return (StochasticDepth,)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a model fx cannot trace gets a ValueError saying why."""
    try:
        try:
            graph = SiteTracer().trace(model)
        except Exception:  # a library block that fx cannot enter (control flow on a tensor) stays whole: its
            graph = SiteTracer(whole_blocks=True).trace(model)  # own activations are then not sites
    except Exception as e:  # fx raises many types (TraceError, TypeError, RuntimeError ...)
        where = _failing_module(model, e)
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx{where}, so its call sites cannot be "
                         f"found: {e}") from e
    return fx.GraphModule(model, graph, type(model).__name__)


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """`` (in module 'blocks.0.attn', Attention)``: the innermost submodule whose forward the trace failed in."""
    import traceback

    names = {id(m): name for name, m in model.named_modules() if name}
    found = ""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and id(owner) in names:
            found = f" (in module {names[id(owner)]!r}, {type(owner).__name__})"
    return found


def propagate_shapes(gm: fx.GraphModule, input_shape: Sequence[int]) -> None:
    """Annotate every node with its output shape, on fake or meta tensors (no real compute, any size)."""
    ref = next(iter(gm.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    was_training = gm.training
    gm.eval()  # BatchNorm on a batch of one is only legal in eval mode
    try:
        # A model on the meta device already computes nothing, and meta tensors propagate
        # about four times faster than fake ones.
        fake = None if device.type == "meta" else FakeTensorMode(allow_non_fake_inputs=True)
        _ShapeProp(gm, fake_mode=fake).propagate(torch.empty(tuple(input_shape), device=device, dtype=dtype))
    finally:
        gm.train(was_training)


class _ShapeProp(ShapeProp):
    """ShapeProp that passes BatchNorm's input through: the output has its shape, and BN's meta and
    fake kernels are Python decompositions (about a third of a ResNet's propagation time)."""

    def call_module(self, target, args, kwargs):
        if isinstance(self.fetch_attr(target), nn.modules.batchnorm._BatchNorm) and not kwargs:
            return args[0]
        return super().call_module(target, args, kwargs)


def find_sites(gm: fx.GraphModule, kinds: Sequence[str] | None = None) -> list[tuple[Site, fx.Node]]:
    """Every candidate site of a shape-propagated graph, in execution order, with its node.

    ``kinds`` (default: every kind in ``SITE_KINDS``) limits which activations count.
    """
    wanted = set(check_kinds(kinds))
    live = _input_dependent(gm.graph)
    found = [(n, kind_of(gm, n)) for n in gm.graph.nodes if n in live]
    found = [(n, k) for n, k in found if k in wanted and not _is_gate(n, live)]
    nodes = [n for n, _ in found]
    paths = _paths(gm, nodes)
    axes = [_channel_dim(gm, n) for n in nodes]
    stages = assign_stages([p for p, _ in paths], [_spatial(n, a) for n, a in zip(nodes, axes)])
    out = []
    for i, ((n, kind), (path, count), stage, axis) in enumerate(zip(found, paths, stages, axes)):
        block, block_type = _block(n)
        site = Site(i, path, _width(n, path, axis), _spatial(n, axis), stage, "", _source(n.args[0]), block, block_type,
                    _inplace(gm, n), kind, axis)
        out.append((site, n))
    return out


def check_kinds(kinds: Sequence[str] | None) -> list[str]:
    """``kinds`` as a list (None: every kind); an unknown kind is a ValueError listing the valid ones."""
    if kinds is None:
        return list(SITE_KINDS)
    unknown = [k for k in kinds if k not in SITE_KINDS]
    if unknown:
        raise ValueError(f"unknown site kind {unknown[0]!r}; valid choices: {', '.join(sorted(SITE_KINDS))}")
    return list(kinds)


def kind_of(gm: fx.GraphModule, n: fx.Node) -> str | None:
    """The ``SITE_KINDS`` name of the activation node ``n`` calls, or None if it calls none."""
    if n.op not in ("call_module", "call_function", "call_method"):
        return None
    module = gm.get_submodule(n.target) if n.op == "call_module" else None
    for kind, (modules, functions, methods) in SITE_KINDS.items():
        if module is not None and isinstance(module, modules):
            return kind
        if n.op == "call_function" and any(n.target is f for f in functions):
            return kind
        if n.op == "call_method" and n.target in methods:
            return kind
    return None


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
        if _is_layer_norm_2d(op):
            return 1
        if _is_call_of(op, _LAST_AXIS):
            return max(ndim - 1, 1)
        if _is_call_of(op, _AXIS_ONE):
            return 1
        cur = next((a for a in cur.args if isinstance(a, fx.Node)), None)
    return 1


def _is_call_of(op: Any, calls: tuple[tuple[type, ...], tuple[Any, ...]]) -> bool:
    modules, functions = calls
    return isinstance(op, modules) or any(op is f for f in functions)


def _is_layer_norm_2d(op: Any) -> bool:
    # torchvision's ConvNeXt LayerNorm2d subclasses nn.LayerNorm but normalises channels at dim 1.
    return isinstance(op, nn.LayerNorm) and type(op).__name__ == "LayerNorm2d"


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


def _spatial(n: fx.Node, channel_dim: int = 1) -> tuple[int, ...]:
    """The output's dims other than batch and channels."""
    return tuple(int(s) for i, s in enumerate(_shape(n)) if i not in (0, channel_dim))


def _width(n: fx.Node, path: str, channel_dim: int = 1) -> int:
    shape = _shape(n)
    if len(shape) < 2:
        raise ValueError(f"site {path} has output shape {tuple(shape)}: an activation site needs (N, C, ...)")
    return int(shape[channel_dim])


def _shape_of(n: fx.Node) -> tuple[int, ...] | None:
    """``n``'s output shape, or None where it is not one tensor."""
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


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
