"""``build_model``: one call from a design-space point to a model and the sites it changed."""
from __future__ import annotations

import inspect
from typing import Any, Sequence

from torch import nn

from acon.activations import create_activation, get_activation
from ablation.generators import takes_option
from ablation.models import create_model, default_input_size
from ablation.sites import Site
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
    kinds: Sequence[str] = ("relu",),
    **options: Any,
) -> tuple[nn.Module, list[Site]]:
    """Build model ``name`` with ``activation`` at the sites ``placement`` selects; return (model, sites).

    ``activation="relu", placement="none"`` is the baseline (sites == []). ``options`` (width_rule,
    bn, bias, beta ...) go to ``acon.create_activation(activation, width, generator=, r=, ...)``;
    ``r`` is passed only to generators that take it. ``input_size`` (default: 32 if small_input,
    else the model's native size) is used only for shape propagation; ``kinds`` names the call
    kinds that count as sites (see ``ablation.sites.SITE_KINDS``).
    """
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, small_input=small_input)
    size = input_size or default_input_size(name, small_input)
    make = _activation_factory(activation, generator, r, options)
    return apply_placement(model, make, placement, input_shape=(1, in_channels, size, size), kinds=kinds, model_name=str(name))


def activation_takes(activation: Any, option: str) -> bool:
    """Whether the activation's factory names ``option`` (a catch-all ``**_`` does not count); unknown: False."""
    try:
        return option in inspect.signature(get_activation(activation)).parameters
    except (KeyError, TypeError, ValueError):
        return False


def _activation_factory(activation: Any, generator: Any, r: int | None, options: dict[str, Any]):
    """``make(site) -> nn.Module``; a bad option for one site names that site."""
    kwargs = dict(options)
    if activation == "meta_acon":
        kwargs["generator"] = generator
        if r is not None and takes_option(generator, "r"):
            kwargs["r"] = r
    elif r is not None and activation_takes(activation, "r"):  # e.g. se_control, the meta-ACON-matched gate
        kwargs["r"] = r

    def make(site: Site) -> nn.Module:
        try:
            return create_activation(activation, site.width, **kwargs)
        except ValueError as e:
            raise ValueError(f"site {site.path} (width {site.width}): {e}") from e

    return make
