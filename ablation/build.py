"""``build_model``: one call from a design-space point to a model and the sites it changed."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

from torch import nn

from acon.activations import activation_options, create_activation
from acon.registry import ConfigError
from ablation.models import create_model, default_input_size
from ablation.sites import Site, unreplaced_summary
from ablation.surgery import apply_placement


def build_model(
    name: Any,
    *,
    activation: Any = "meta_acon",
    generator: Any = "channel",
    r: int | None = 16,
    placement: Any = "all",
    num_classes: int = 10,
    in_channels: int = 3,
    small_input: bool = False,
    input_size: int | None = None,
    kinds: Sequence[str] | None = None,
    **options: Any,
) -> tuple[nn.Module, list[Site]]:
    """Build model ``name`` with ``activation`` at the sites ``placement`` selects; return (model, sites).

    ``activation="relu", placement="none"`` is the baseline (sites == []). ``generator`` and ``r`` are
    design axes, passed only where the activation (and its generator) takes them; ``options`` (width_rule,
    bn, bias, beta ...) go to ``acon.create_activation(activation, width, ...)``, which refuses unknown
    ones. ``input_size`` (default: 32 if small_input, else the model's native size) is used only for
    shape propagation; ``kinds`` limits the activations that count as sites (default: all of
    ``ablation.site_kinds.SITE_KINDS``, whichever the model uses). An activation factory that declares
    ``original`` gets the module it replaces.

    Activation calls that cannot be sites (inside a block torch.fx cannot enter) are the returned sites'
    ``unreplaced``, and one ``UnreplacedWarning`` line says how many and where (``unreplaced_summary(sites)``).
    """
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, small_input=small_input,
                         input_size=input_size)
    size = input_size or default_input_size(name, small_input)
    make = _activation_factory(activation, generator, r, options)
    # The model was made here, so surgery may change it in place instead of copying it.
    model, sites = apply_placement(model, make, placement, input_shape=(1, in_channels, size, size), kinds=kinds,
                                   model_name=str(name), copy_model=False)
    if note := unreplaced_summary(sites):
        label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
        warnings.warn(f"{label}: {note}", UnreplacedWarning, stacklevel=2)
    return model, sites


class UnreplacedWarning(UserWarning):
    """A model whose activation calls are not all sites: a design compared on it leaves some calls unchanged."""


def _activation_factory(activation: Any, generator: Any, r: int | None, options: dict[str, Any]):
    """``make(site, original=module) -> nn.Module``; a bad option for one site names that site."""
    accepted = activation_options(activation, generator)  # None: takes anything
    axes = {"generator": generator, "r": r}
    kwargs = {**{k: v for k, v in axes.items() if v is not None and k in (accepted or ())}, **options}
    # ``original`` only to a factory that names it; channel_dim only where a site is channels-last
    # (ViT, Swin, ConvNeXt MLPs) and the factory takes it: an elementwise baseline does not need it.
    wants_original = accepted is not None and "original" in accepted
    takes_axis = accepted is None or "channel_dim" in accepted

    def make(site: Site, original: nn.Module | None = None) -> nn.Module:
        extra = {"channel_dim": site.channel_dim} if site.channel_dim != 1 and takes_axis else {}
        if wants_original:
            extra["original"] = original
        try:
            return create_activation(activation, site.width, **kwargs, **extra)
        except ValueError as e:  # a user's bad value stays a ConfigError (one line in the CLI)
            kind = ConfigError if isinstance(e, ConfigError) else ValueError
            raise kind(f"site {site.path} (width {site.width}): {e}") from e

    return make
