"""A model as a torch.fx graph for site finding: ``trace`` (a block fx cannot enter is kept whole and retried) and
``propagate_shapes`` (every node's output shape, on fake or meta tensors; what a leaf module calls is counted).

A library whose modules fx must not enter hands them over with ``add_leaf_source`` (``ablation.timm_models`` does
for timm's no-trace modules and functions): this module never imports a model library back.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from ablation.site_calls import ActivationCalls
from ablation.site_kinds import autowrapped_functions, site_classes

#: ``source() -> (module classes, functions)``: fx leaves and autowrapped functions, asked again at every trace.
LeafSource = Callable[[], tuple[tuple[type, ...], tuple[Callable, ...]]]

_LEAF_SOURCES: list[LeafSource] = []


def add_leaf_source(source: LeafSource) -> None:
    """Ask ``source()`` at every trace for more modules fx keeps whole and functions it keeps as one node a call
    (a library's no-trace list; it may return empty tuples while the library is not loaded)."""
    if source not in _LEAF_SOURCES:
        _LEAF_SOURCES.append(source)


class SiteTracer(fx.Tracer):
    """The default fx tracer, plus leaves for activation modules of any library (a call stays one node), for
    modules whose Python branches read ``self.training``, for the leaf sources' modules and functions (timm's
    no-trace lists), and for the ``whole`` classes (blocks fx failed to enter: their activations are found at run
    time, see ``ablation.site_finder.find_sites``)."""

    def __init__(self, *, whole: tuple[type, ...] = ()) -> None:
        modules, functions = _from_sources()
        self.leaves = _extra_leaves() + modules + whole + site_classes()
        super().__init__(autowrap_functions=functions + autowrapped_functions())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _from_sources() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """Every leaf source's modules and functions, in the order the sources were added."""
    modules: tuple[type, ...] = ()
    functions: tuple[Callable, ...] = ()
    for source in _LEAF_SOURCES:
        more_modules, more_functions = source()
        modules, functions = modules + tuple(more_modules), functions + tuple(more_functions)
    return modules, functions


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
