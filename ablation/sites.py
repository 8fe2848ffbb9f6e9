"""Activation call sites of a model, found with torch.fx and shape propagation (and at run time inside a block fx
cannot enter: ``ActivationCalls`` counts calls at the function level, as ``activation_calls`` does for a whole model).

A site is one CALL of the model's own activation (ReLU, GELU, SiLU, ... as a module, a function
or a tensor method), not a module instance: torchvision's ResNet blocks call one ``self.relu``
several times (at two widths in Bottleneck), and each call is its own site. Gates (an
activation whose output scales another tensor, as in squeeze-excite) are never sites.
"""
from __future__ import annotations

import dataclasses
import operator
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

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
    """The default fx tracer, plus leaves for activation modules of any library (a call stays one node), for
    modules whose Python branches read ``self.training``, for timm's no-trace modules and functions, and for the
    ``whole`` classes (blocks fx failed to enter: their activations are found at run time, see ``find_sites``)."""

    def __init__(self, *, whole: tuple[type, ...] = ()) -> None:
        from ablation.timm_models import notrace

        modules, functions = notrace()
        self.leaves = _extra_leaves() + modules + whole + site_classes()
        super().__init__(autowrap_functions=functions + tuple(_AUTOWRAPPED))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def site_classes() -> tuple[type, ...]:
    """Every activation module class in ``SITE_KINDS``."""
    return tuple(c for classes, _, _ in SITE_KINDS.values() for c in classes)


def _extra_leaves() -> tuple[type, ...]:
    # StochasticDepth returns its input unchanged when not training: tracing through it would
    # freeze the training-mode branch into the graph.
    from torchvision.ops import StochasticDepth

    return (StochasticDepth,)


#: How many block classes a trace may keep whole before giving up.
_MAX_WHOLE = 8


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a model fx cannot trace gets a ValueError saying why.

    A block fx cannot enter (control flow on a tensor, as in timm's ``MobileVitBlock``) is kept whole, that block
    class alone, and the trace retried; the activations inside it are then found at run time (``propagate_shapes``).
    """
    whole: tuple[type, ...] = ()
    while True:
        try:
            graph = SiteTracer(whole=whole).trace(model)
            return fx.GraphModule(model, graph, type(model).__name__)
        except Exception as e:  # fx raises many types (TraceError, TypeError, RuntimeError ...)
            path, block = _failing_module(model, e)
            if block is None or type(block) in whole or len(whole) >= _MAX_WHOLE:
                where = f" (in module {path!r}, {type(block).__name__})" if block is not None else ""
                raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx{where}, so its call sites "
                                 f"cannot be found: {e}") from e
            whole += (type(block),)


def _failing_module(model: nn.Module, exc: BaseException) -> tuple[str, nn.Module | None]:
    """The innermost submodule (path, module) whose forward the trace failed in; ("", None) if none."""
    import traceback

    names = {id(m): name for name, m in model.named_modules() if name}
    found: tuple[str, nn.Module | None] = ("", None)
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and id(owner) in names:
            found = (names[id(owner)], owner)
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
    fake kernels are Python decompositions (about a third of a ResNet's propagation time). Every other leaf module
    runs under ``ActivationCalls``: what it calls is in ``node.meta["activation_calls"]``."""

    def run_node(self, n: fx.Node) -> Any:
        self._node = n
        try:
            return super().run_node(n)
        except Exception as e:  # ShapeProp wraps what the node raised in a RuntimeError
            cause = _data_dependent(e)
            if n.op != "call_module" or cause is None:
                raise
            # a block kept whole because fx cannot enter it, whose control flow needs the values themselves
            raise ValueError(f"{type(self.module).__name__} cannot be traced by torch.fx (in module {n.target!r}, "
                             f"{type(self.fetch_attr(n.target)).__name__}), so its call sites cannot be found: "
                             f"control flow on a tensor's value ({type(cause).__name__})") from e

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not kwargs:
            return args[0]
        if isinstance(module, site_classes()):
            return super().call_module(target, args, kwargs)
        with ActivationCalls(module, args, prefix=target) as calls:
            out = super().call_module(target, args, kwargs)
        self._node.meta["activation_calls"] = calls.calls
        return out


def _data_dependent(exc: BaseException | None) -> BaseException | None:
    """The data-dependent error (a branch on a fake tensor's value) in ``exc``'s chain of causes, else None."""
    while exc is not None:
        if "DataDependent" in type(exc).__name__:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# ---- activation calls at run time --------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One activation call seen at run time: its ``SITE_KINDS`` kind; ``path``: the activation module that made
    it (``module``), else the module whose forward called the function; the output ``shape`` and ``channel_dim``;
    ``gate``: its output then scaled another tensor it was not computed from (never a site)."""

    kind: str
    path: str
    module: bool
    shape: tuple[int, ...]
    channel_dim: int = 1
    gate: bool = False


class ActivationCalls(TorchFunctionMode):
    """Counts the activation calls a module makes while active, at the function level: every torch function or
    tensor method of ``SITE_KINDS`` (``nn.ReLU`` calls ``F.relu``: one call), and an activation module that calls
    none (timm's ``Swish``) once. Only calls on values computed from ``inputs`` count; gates are marked."""

    def __init__(self, root: nn.Module, inputs: Iterable[Any], *, prefix: str = "") -> None:
        super().__init__()
        self.calls: list[Call] = []
        self._classes = site_classes()
        self._functions = {f: kind for kind, (_, fs, ms) in SITE_KINDS.items()
                           for f in (*fs, *(getattr(torch.Tensor, m) for m in ms))}
        self._live: dict[int, frozenset[int]] = {}  # tensor id -> the calls it was computed from
        self._keep: list[torch.Tensor] = []  # every tensor seen stays alive, so no id is reused
        self._made: dict[int, tuple[Any, int | None]] = {}  # tensor id -> (op or module that made it, its input id)
        self._output_of: dict[int, int] = {}  # activation output id -> call index
        self._stack: list[list] = []  # [path, module, call index] of each forward being run
        self._hooks = [h for name, m in root.named_modules() for h in self._hook(m, _join(prefix, name))]
        for t in _tensors(inputs):
            self._mark(t, frozenset(), None, None)

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for h in self._hooks:
            h.remove()
        self._keep.clear()

    def _hook(self, m: nn.Module, path: str) -> list:
        def enter(module, args):
            self._stack.append([path, module, None])

        def leave(module, args, out):
            _, _, index = self._stack.pop()
            inp = next(iter(_tensors(args)), None)
            if isinstance(module, self._classes) and not self._inside_activation() and isinstance(out, torch.Tensor):
                if index is None and inp is not None and id(inp) in self._live:
                    index = self._record(_module_kind(module), path, True, out, inp)
                if index is not None:
                    self._output_of[id(out)] = index
            for t in _tensors(out):
                self._made[id(t)] = (module, None if inp is None else id(inp))

        return [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = _tensors((args, kwargs))
        live = [self._live[id(t)] for t in given if id(t) in self._live]
        if not live:
            return out
        ancestry = frozenset().union(*live)
        kind = self._functions.get(func)
        top = self._stack[-1] if self._stack else None
        if kind is not None and id(given[0]) in self._live and isinstance(out, torch.Tensor):
            if top is not None and isinstance(top[1], self._classes):  # the module's own call: counted once
                if top[2] is None:
                    top[2] = self._record(_module_kind(top[1]), top[0], True, out, given[0])
                ancestry |= {top[2]}
            elif not self._inside_activation():
                index = self._output_of[id(out)] = self._record(kind, top[0] if top else "", False, out, given[0])
                ancestry |= {index}
        elif getattr(func, "__name__", "") in _MULTIPLY_NAMES and not self._inside_activation():
            self._mark_gates(given, out)
        for t in _tensors(out):
            self._mark(t, ancestry, func, id(given[0]))
        return out

    def _inside_activation(self) -> bool:
        # Nested activation calls (timm's hard_swish calls relu6) belong to the activation module around them.
        return any(isinstance(m, self._classes) for _, m, _ in self._stack)

    def _record(self, kind: str, path: str, module: bool, out: torch.Tensor, inp: torch.Tensor) -> int:
        self.calls.append(Call(kind, path, module, tuple(out.shape), self._axis(inp, out.dim())))
        return len(self.calls) - 1

    def _mark(self, t: torch.Tensor, ancestry: frozenset[int], op: Any, source: int | None) -> None:
        self._live[id(t)] = ancestry
        self._keep.append(t)
        self._made.setdefault(id(t), (op, source))

    def _mark_gates(self, given: list[torch.Tensor], out: Any) -> None:
        """A multiply that scales a tensor by an activation's output, as ``_is_gate`` does on a graph."""
        shape = getattr(out, "shape", None)
        for t in given:
            index = self._output_of.get(id(t))
            if index is None:
                continue
            if any(o is not t and id(o) in self._live and o.shape == shape and index not in self._live[id(o)]
                   for o in given):
                self.calls[index] = dataclasses.replace(self.calls[index], gate=True)

    def _axis(self, inp: torch.Tensor, ndim: int) -> int:
        """The channel axis, as ``_channel_dim`` finds it on a graph: walk back to a Linear/LayerNorm or conv/norm."""
        cur: int | None = id(inp)
        for _ in range(8):
            op, cur = self._made.get(cur, (None, None))
            if op is None:
                break
            if (axis := _axis_after(op, ndim)) is not None:
                return axis
        return 1


_MULTIPLY_NAMES = ("mul", "mul_", "__mul__", "__rmul__", "__imul__")


def activation_calls(model: nn.Module, *inputs: Any) -> list[Call]:
    """Every activation call ``model(*inputs)`` makes (gates marked), counted at run time without tracing."""
    with torch.no_grad(), ActivationCalls(model, inputs) as calls:
        model(*inputs)
    return calls.calls


def _module_kind(module: nn.Module) -> str:
    return next(kind for kind, (classes, _, _) in SITE_KINDS.items() if isinstance(module, classes))


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


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
    stages = assign_stages([p for p, _ in paths], [_spatial(sh, a) for sh, a in zip(shapes, axes)])
    out = []
    for i, ((n, kind, call), (path, _), stage, axis, shape) in enumerate(zip(found, paths, stages, axes, shapes)):
        block, block_type = _inner_block(gm, call.path) if call else _block(n)
        source = str(n.target) if call else _source(n.args[0])
        site = Site(i, path, _width(shape, path, axis), _spatial(shape, axis), stage, "", source, block, block_type,
                    False if call else _inplace(gm, n), kind, axis)
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


class Sites(list):
    """The sites a surgery changed (a list of ``Site``), and ``unreplaced``: the activation calls of the model that
    are no site (``unreplaced_calls``), so a caller can say so."""

    def __init__(self, sites: Iterable[Site] = (), unreplaced: Iterable[Call] = ()) -> None:
        super().__init__(sites)
        self.unreplaced = tuple(unreplaced)


def unreplaced_summary(sites: Sequence[Site]) -> str:
    """One line on the activation calls ``sites`` left unreplaced, and where; "" when none (or unknown)."""
    left = getattr(sites, "unreplaced", ())
    if not left:
        return ""
    where = Counter((c.path, c.kind, "module" if c.module else "function") for c in left)
    shown = [f"{path or '(root)'} {kind} {how}" + (f" x{k}" if k > 1 else "") for (path, kind, how), k in where.items()]
    more = f", ... ({len(shown) - 6} more places)" if len(shown) > 6 else ""
    return (f"{len(left)} activation call(s) left unreplaced (inside blocks torch.fx cannot enter): "
            f"{', '.join(shown[:6])}{more}")


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
        if (axis := _axis_after(op, ndim)) is not None:
            return axis
        cur = next((a for a in cur.args if isinstance(a, fx.Node)), None)
    return 1


def _axis_after(op: Any, ndim: int) -> int | None:
    """The channel axis of an output of ``op`` (a module or function), or None if ``op`` does not decide it."""
    if _is_layer_norm_2d(op) or _is_call_of(op, _AXIS_ONE):
        return 1
    if _is_call_of(op, _LAST_AXIS):
        return max(ndim - 1, 1)
    return None


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


def _spatial(shape: Sequence[int], channel_dim: int = 1) -> tuple[int, ...]:
    """The output's dims other than batch and channels."""
    return tuple(int(s) for i, s in enumerate(shape) if i not in (0, channel_dim))


def _width(shape: Sequence[int], path: str, channel_dim: int = 1) -> int:
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
