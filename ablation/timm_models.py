"""timm models by name (``timm/<name>``): built without weights, their activations known as sites.

timm is optional (``pip install -e '.[timm]'``). On first use its own activation modules (``GELU``,
``GELUTanh``, ``QuickGELU``, ``Swish``, ``HardSwish``, ``Mish``, ``HardMish`` and their ``*Me``/``*AutoFn``
forms) and functions join ``ablation.sites.SITE_KINDS`` (its ``HardSigmoid`` and ``Sigmoid`` are gates, never
sites), and its no-trace modules and functions become fx leaves, as timm's own feature extraction does.
"""
from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from acon.registry import ConfigError
from acon.registry import Entry

PREFIX = "timm/"
INSTALL = "pip install -e '.[timm]'"

#: SITE_KINDS kind -> names of timm's activation modules and functions of that kind.
_TIMM_KINDS = {
    "gelu": (("GELU", "GELUTanh", "QuickGELU"), ("gelu", "gelu_tanh", "quick_gelu")),
    "silu": (("Swish", "SwishMe", "SwishAutoFn"), ("swish", "swish_me")),
    "hardswish": (("HardSwish", "HardSwishMe", "HardSwishAutoFn"), ("hard_swish", "hard_swish_me")),
    "mish": (("Mish", "MishMe", "MishAutoFn", "HardMish", "HardMishMe", "HardMishAutoFn"),
             ("mish", "mish_me", "hard_mish", "hard_mish_me")),
}


def is_timm(name: Any) -> bool:
    """Whether ``name`` asks for a timm model (``timm/<name>``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def timm_module():
    """The ``timm`` package with its activations registered as sites; one ``error:`` line when it is missing."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"timm models need the timm package: {INSTALL}") from None
    _register_sites()
    return timm


@functools.cache
def _register_sites() -> None:
    """Add timm's activation modules and functions to ``SITE_KINDS`` (once per process)."""
    from timm.layers import activations, activations_me, create_act

    from ablation import sites

    pools = (activations, activations_me, create_act)
    for kind, (classes, functions) in _TIMM_KINDS.items():
        found_classes = tuple(getattr(m, n) for n in classes for m in pools if isinstance(getattr(m, n, None), type))
        found_functions = tuple(getattr(m, n) for n in functions for m in pools if callable(getattr(m, n, None)))
        sites.add_site_kind(kind, classes=found_classes, functions=found_functions)


def list_timm_models() -> list[str]:
    """Every timm architecture name as ``timm/<name>``, sorted."""
    return [PREFIX + n for n in timm_module().list_models()]


def timm_entry(name: str) -> Entry:
    """A model-registry entry for ``timm/<arch>``: its factory and its native input side."""
    timm = timm_module()
    arch = name[len(PREFIX):]
    if arch not in set(timm.list_models()):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(PREFIX + c for c in close)}?)" if close else ""
        raise ConfigError(f"unknown timm model {arch!r}{hint}; see `run_study.py list models --timm`")
    cfg = timm.models.get_pretrained_cfg(arch)
    size = int((getattr(cfg, "input_size", None) or (3, 224, 224))[-1])
    return Entry(name, _factory(arch), f"timm.create_model({arch!r}, pretrained=False)",
                 {"input_size": size, "native_small": False})


def _factory(arch: str) -> Callable[..., nn.Module]:
    def factory(*, num_classes: int = 10, in_channels: int = 3, small_input: bool = False,
                input_size: int | None = None) -> nn.Module:
        """timm's model without weights; ``input_size`` is passed as ``img_size`` where the model takes one (ViTs)."""
        return split_norm_act(timm_original(arch, num_classes=num_classes, in_channels=in_channels,
                                            input_size=input_size))

    factory.__name__ = arch
    return factory


def timm_original(arch: str, *, num_classes: int = 10, in_channels: int = 3, input_size: int | None = None) -> nn.Module:
    """timm's own model ``arch`` without weights, unchanged; ``img_size=input_size`` where it takes one."""
    timm = timm_module()
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if input_size is None:
        return timm.create_model(arch, **kwargs)
    try:
        return timm.create_model(arch, **kwargs, img_size=input_size)
    except TypeError as e:  # most models take no img_size (convnets): they are built at any size
        if not _refuses_img_size(e):
            raise
    return timm.create_model(arch, **kwargs)


def _refuses_img_size(exc: TypeError) -> bool:
    """Whether ``exc`` is a constructor refusing the ``img_size`` keyword (any other error is real): Python's
    "got an unexpected keyword argument 'img_size'" or timm's "got unexpected keyword argument(s): ['img_size']"."""
    return re.search(r"unexpected keyword argument.*'img_size'", str(exc)) is not None


class NormThenAct(nn.Module):
    """A timm norm-act layer as its three parts, ``act(drop(norm(x)))``: timm keeps ``BatchNormAct2d`` whole for
    fx (its batch norm branches on ``self.training``), which hides its activation; split, the norm is a plain
    torch layer (an fx leaf) and the activation a call site of its own. Keys: ``norm.*``, ``act.*``."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x):
        return self.act(self.drop(self.norm(x)))


def split_norm_act(model: nn.Module) -> nn.Module:
    """Replace timm's batch-, group- and layer-norm-act layers in ``model`` by ``NormThenAct`` (same values)."""
    for path, module in list(model.named_modules()):
        plain = _plain_norm(module)
        if plain is None:
            continue
        plain.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith(("act.", "drop."))})
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, NormThenAct(plain, module.drop, module.act))
    return model


def _plain_norm(m: nn.Module) -> nn.Module | None:
    """The torch (or timm) norm layer a norm-act layer computes before its activation; None for anything else."""
    from timm.layers import LayerNorm2d, norm_act

    if type(m) is norm_act.BatchNormAct2d:
        return nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if type(m) in (norm_act.GroupNormAct, norm_act.GroupNorm1Act):
        return nn.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine)
    if type(m) is norm_act.LayerNormAct2d:
        return LayerNorm2d(m.normalized_shape, eps=m.eps, affine=m.elementwise_affine)
    if type(m) is norm_act.LayerNormAct:
        return nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine)
    return None


def notrace() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's modules and functions that fx must not trace into (leaves, autowrapped), if timm is loaded.

    timm also keeps some whole blocks (``NormFreeBlock``, ``MobileVitBlock``, ``ConvMlp``) out of its feature
    graphs; fx can enter most of them, and their activations are sites, so they are entered (a block fx then fails
    in is kept whole by ``ablation.sites.trace``). ``DropPath`` is a leaf: its branch on ``self.training`` must stay a
    run-time branch.
    """
    import sys

    if "timm" not in sys.modules:
        return (), ()
    from timm.layers import DropPath, _fx

    modules = tuple(m for m in _fx.get_notrace_modules() if not m.__name__.endswith(("Block", "Mlp")))
    return modules + (DropPath,), tuple(_fx.get_notrace_functions())


def families() -> dict[str, list[str]]:
    """timm's architecture families (its model modules) -> their model names; timm's own test models left out."""
    from timm.models import _registry

    current = set(timm_module().list_models())  # the registry also maps deprecated names
    out: dict[str, list[str]] = {}
    for model, module in sorted(_registry._model_to_module.items()):
        if model in current and not model.startswith("test_"):
            out.setdefault(module, []).append(model)
    return out


def smallest(names: list[str]) -> str:
    """The variant with the fewest parameters, counted on the meta device (nothing allocated)."""
    import torch

    timm = timm_module()

    def size(name: str) -> float:
        try:
            with torch.device("meta"):
                return sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
        except Exception:
            return float("inf")

    return min(names, key=lambda n: (size(n), n))


def check_model(name: str, generator: str, *, size: int = 64, num_classes: int = 10) -> str | None:
    """Build ``timm/<name>`` with meta-ACON (``generator``) at every site and run forward and backward on a
    (2, 3, size, size) batch, or at the model's native size if it takes no other (a ViT with a fixed position
    embedding); None when it works, else the reason (at the small size) in one line."""
    reason = _check(name, generator, size, num_classes)
    native = timm_entry(PREFIX + name).meta["input_size"]
    if reason is None or native == size or _check(name, generator, native, num_classes) is not None:
        return reason
    return None


@dataclass(frozen=True)
class Coverage:
    """Sites found in ``timm/<name>`` against the activation calls timm's own model makes (counted at run time,
    ``gates`` left out); ``unreplaced``: calls the builder reports it could not make sites; ``size``: the input side."""

    name: str
    sites: int
    unreplaced: int
    calls: int
    size: int
    gates: int = 0

    @property
    def complete(self) -> bool:
        """Every activation call is a site."""
        return self.sites == self.calls and not self.unreplaced


def site_coverage(name: str, *, size: int = 64) -> Coverage:
    """``Coverage`` of ``timm/<name>`` at a (1, 3, size, size) input, or at its native size if it takes no other.

    Counted on the meta device (no compute), or on the CPU for a model whose forward needs values."""
    native = timm_entry(PREFIX + name).meta["input_size"]
    tries = [(size, "meta"), (size, "cpu")] + [(native, "cpu")] * (native != size)
    for i, (side, device) in enumerate(tries):
        try:
            return _coverage(name, side, device)
        except Exception:
            if i == len(tries) - 1:
                raise
    raise AssertionError("unreachable")


def _coverage(name: str, size: int, device: str) -> Coverage:
    import torch

    from ablation.sites import activation_calls
    from ablation.surgery import list_sites

    with torch.device(device):
        x = torch.randn(1, 3, size, size)
        calls = activation_calls(timm_original(name, input_size=size).eval(), x)
        model = timm_entry(PREFIX + name).obj(num_classes=10, input_size=size)
    sites = list_sites(model, tuple(x.shape))
    gates = sum(c.gate for c in calls)
    return Coverage(name, len(sites), len(sites.unreplaced), len(calls) - gates, size, gates)


def _check(name: str, generator: str, size: int, num_classes: int) -> str | None:
    import torch

    from ablation import build_model

    try:
        model, sites = build_model(PREFIX + name, activation="meta_acon", generator=generator, r=16,
                                   num_classes=num_classes, input_size=size)
        model.train()
        out = model(torch.randn(2, 3, size, size))
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().square().mean().backward()
        if out.shape[-1] != num_classes:
            return f"output shape {tuple(out.shape)}, not {num_classes} classes"
        return None
    except Exception as e:
        text = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {text[:200]}"
