"""The model registry: every torchvision classification model by name, CIFAR ResNets, tiny_cnn.

Every entry is ``factory(*, num_classes, in_channels, small_input) -> nn.Module``. No weights are
ever downloaded (``weights=None``). ``small_input=True`` adapts the stem to 32x32-or-smaller
images for the families in ``SMALL_INPUT_FAMILIES``; other torchvision models refuse it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator
from unittest import mock

import torch
import torchvision
from torch import nn

from acon.registry import Entry, Registry
from ablation import small_models
from ablation.model_paths import is_import_path, path_entry
from ablation.surgery import declares_keyword
from ablation.timm_models import is_timm, timm_entry

MODELS = Registry(
    "model",
    doc="factory(*, num_classes: int, in_channels: int, small_input: bool) -> nn.Module taking (N, in_channels, H, W). "
    "Metadata: input_size (native side, for shape propagation), native_small (built for small images: "
    "small_input changes nothing).",
    meta={"input_size": 224, "native_small": False},
)

#: ``register_model(name, factory=None, *, input_size=224, native_small=False, help=None, override=False)``.
register_model = MODELS.register


def model_entry(name: Any) -> Entry:
    """The entry of a model name: registered, ``timm/<name>`` (timm, without weights) or an import path
    (``mynets.py:make_net``, ``mypkg.models:make_net``); a class or callable passes straight through."""
    if isinstance(name, str) and name not in MODELS:
        if is_timm(name):
            return timm_entry(name)
        if is_import_path(name):
            return path_entry(name)
    return MODELS.entry(name)


def create_model(name: Any, *, num_classes: int = 10, in_channels: int = 3, small_input: bool = False,
                 input_size: int | None = None) -> nn.Module:
    """Build model ``name`` (random init) for ``num_classes`` and ``in_channels``; a factory that declares
    ``input_size`` gets the input side too (timm's ViTs take it as ``img_size``)."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    factory = model_entry(name).obj
    # Only a factory naming input_size gets it: one taking **kwargs may forward them to a constructor that does not.
    extra = {"input_size": input_size} if declares_keyword(factory, "input_size") else {}
    return factory(num_classes=num_classes, in_channels=in_channels, small_input=small_input, **extra)


def default_input_size(name: Any, small_input: bool = False) -> int:
    """The input side used for shape propagation: 32 for small inputs, else the model's native size."""
    meta = model_entry(name).meta
    return meta["input_size"] if meta["native_small"] or not small_input else 32


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


# ---- torchvision -------------------------------------------------------------------------------

def _small_resnet(m: nn.Module) -> None:
    m.conv1 = _like(m.conv1, kernel_size=3, stride=1, padding=1)
    m.maxpool = nn.Identity()


def _small_densenet(m: nn.Module) -> None:
    m.features.conv0 = _like(m.features.conv0, kernel_size=3, stride=1, padding=1)
    m.features.pool0 = nn.Identity()


def _small_shufflenet(m: nn.Module) -> None:
    m.conv1[0] = _like(m.conv1[0], kernel_size=3, stride=1, padding=1)
    m.maxpool = nn.Identity()


def _small_mobilenet(m: nn.Module) -> None:
    m.features[0][0] = _like(m.features[0][0], stride=1)


def _small_regnet(m: nn.Module) -> None:
    m.stem[0] = _like(m.stem[0], stride=1)


#: torchvision name prefix -> stem change for small images (3x3 stride-1 stem, no max-pool).
SMALL_INPUT_FAMILIES: dict[str, Callable[[nn.Module], None]] = {
    "resnet": _small_resnet,
    "resnext": _small_resnet,
    "wide_resnet": _small_resnet,
    "densenet": _small_densenet,
    "shufflenet_v2": _small_shufflenet,
    "mobilenet_v2": _small_mobilenet,
    "mobilenet_v3": _small_mobilenet,
    "regnet": _small_regnet,
}

#: Extra builder arguments: aux heads off (their Python branch on self.training would be frozen
#: by fx tracing), and no ImageNet input transform (it assumes 3 channels and pretrained weights).
_EXTRA: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": False},
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": False},
}


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    def factory(*, num_classes: int = 10, in_channels: int = 3, small_input: bool = False) -> nn.Module:
        with _regnet_widths_on_cpu() if name.startswith("regnet") else contextlib.nullcontext():
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **_EXTRA.get(name, {}))
        if in_channels != 3:
            _set_input_channels(model, in_channels)
        if small_input:
            _small_stem(name)(model)
        return model

    factory.__doc__ = f"torchvision.models.{name} (weights=None)"
    return factory


@contextlib.contextmanager
def _regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet computes its block widths with tensor ops and ``.tolist()``: under ``torch.device("meta")``
    those tensors hold no data. Compute them on the CPU; the model's own tensors keep the ambient device."""
    params = torchvision.models.regnet.BlockParams
    compute = params.from_init_params.__func__

    def on_cpu(cls, *args: Any, **kwargs: Any):
        with torch.device("cpu"):
            return compute(cls, *args, **kwargs)

    with mock.patch.object(params, "from_init_params", classmethod(on_cpu)):
        yield


def _small_stem(name: str) -> Callable[[nn.Module], None]:
    for prefix, adapt in SMALL_INPUT_FAMILIES.items():
        if name.startswith(prefix):
            return adapt
    families = ", ".join(f"{p}*" for p in sorted(SMALL_INPUT_FAMILIES))
    raise ValueError(f"small_input=True is not supported for {name!r}; supported: {families}, resnet20/32/56, tiny_cnn")


def _set_input_channels(model: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel conv (the stem) for one taking ``in_channels``."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, _like(module, in_channels=in_channels))
            return
    raise ValueError(f"{type(model).__name__} has no 3-channel input conv to adapt to {in_channels} channels")


def _like(conv: nn.Conv2d, **changes: Any) -> nn.Conv2d:
    """A new conv with ``conv``'s settings, some of them changed."""
    kw = dict(
        in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    kw.update(changes)
    return nn.Conv2d(**kw)


for _name in torchvision.models.list_models(module=torchvision.models):
    register_model(_name, _torchvision_factory(_name), input_size=299 if _name == "inception_v3" else 224)


# ---- written here ------------------------------------------------------------------------------

def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    def factory(*, num_classes: int = 10, in_channels: int = 3, small_input: bool = True) -> nn.Module:
        return small_models.CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, option-A shortcuts), for 32x32 inputs"
    return factory


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", _cifar_resnet(_depth), input_size=32, native_small=True)


@register_model("tiny_cnn", input_size=8, native_small=True, help="3 conv-bn-relu blocks + MLP head (~26k params) for 8x8/28x28 digits")
def _tiny_cnn(*, num_classes: int = 10, in_channels: int = 1, small_input: bool = True) -> nn.Module:
    return small_models.TinyCNN(num_classes=num_classes, in_channels=in_channels)
