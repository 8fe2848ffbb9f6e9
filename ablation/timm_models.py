"""timm models by name (``timm/<name>``): built without weights, their activations known as sites.

timm is optional (``pip install -e '.[timm]'``). On first use its own activation modules (``GELU``,
``GELUTanh``, ``QuickGELU``, ``Swish``, ``HardSwish``, ``Mish``, ``HardMish`` and their ``*Me``/``*AutoFn``
forms) and functions join ``ablation.site_kinds.SITE_KINDS`` (its ``HardSigmoid`` and ``Sigmoid`` are gates, never
sites), and its no-trace modules and functions become fx leaves, as timm's own feature extraction does: this module
hands ``notrace`` to the tracer (``ablation.site_tracing.add_leaf_source``) when it is imported, with the package.
"""
from __future__ import annotations

import difflib
import functools
import re
import sys
from typing import Any, Callable

from torch import nn

from acon.registry import ConfigError
from acon.registry import Entry
from ablation.site_kinds import add_site_kind
from ablation.site_tracing import add_leaf_source

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

    pools = (activations, activations_me, create_act)
    for kind, (classes, functions) in _TIMM_KINDS.items():
        found_classes = tuple(getattr(m, n) for n in classes for m in pools if isinstance(getattr(m, n, None), type))
        found_functions = tuple(getattr(m, n) for n in functions for m in pools if callable(getattr(m, n, None)))
        add_site_kind(kind, classes=found_classes, functions=found_functions)


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
    in is kept whole by ``ablation.site_tracing.trace``). ``DropPath`` is a leaf: its branch on ``self.training`` must stay a
    run-time branch.
    """
    if "timm" not in sys.modules:
        return (), ()
    from timm.layers import DropPath, _fx

    modules = tuple(m for m in _fx.get_notrace_modules() if not m.__name__.endswith(("Block", "Mlp")))
    return modules + (DropPath,), tuple(_fx.get_notrace_functions())


# The tracer asks at every trace; while timm is not loaded, notrace() adds nothing.
add_leaf_source(notrace)
