"""Activation calls counted at run time, at the function level: ``ActivationCalls`` (a ``TorchFunctionMode``) sees
every call of a ``SITE_KINDS`` function or tensor method, and each activation module once, with its output shape,
channel axis and whether it gates; ``activation_calls`` counts them for a whole model, without tracing.

The tracer runs blocks fx cannot enter under it, so the sites inside them are found too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ablation.site_kinds import SITE_KINDS, module_kind, site_classes
from ablation.site_layout import axis_after

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
                    index = self._record(module_kind(module), path, True, out, inp)
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
                    top[2] = self._record(module_kind(top[1]), top[0], True, out, given[0])
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
        """A multiply that scales a tensor by an activation's output, as ``site_finder`` finds gates on a graph."""
        shape = getattr(out, "shape", None)
        for t in given:
            index = self._output_of.get(id(t))
            if index is None:
                continue
            if any(o is not t and id(o) in self._live and o.shape == shape and index not in self._live[id(o)]
                   for o in given):
                self.calls[index] = dataclasses.replace(self.calls[index], gate=True)

    def _axis(self, inp: torch.Tensor, ndim: int) -> int:
        """The channel axis, as ``site_finder`` finds it on a graph: walk back to a Linear/LayerNorm or conv/norm."""
        cur: int | None = id(inp)
        for _ in range(8):
            op, cur = self._made.get(cur, (None, None))
            if op is None:
                break
            if (axis := axis_after(op, ndim)) is not None:
                return axis
        return 1


_MULTIPLY_NAMES = ("mul", "mul_", "__mul__", "__rmul__", "__imul__")


def activation_calls(model: nn.Module, *inputs: Any) -> list[Call]:
    """Every activation call ``model(*inputs)`` makes (gates marked), counted at run time without tracing."""
    with torch.no_grad(), ActivationCalls(model, inputs) as calls:
        model(*inputs)
    return calls.calls


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)
