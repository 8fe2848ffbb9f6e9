"""The design space of ACON ablations: beta generators, placement policies, models, model surgery.

``build_model(name, activation=, generator=, r=, placement=, ...)`` returns a model and the list
of activation call sites it changed; the registries say which names each axis accepts.
"""
from ablation.build import build_model
from ablation.generators import GENERATORS, generator_complexity, get_generator, register_generator
from ablation.models import MODELS, create_model, default_input_size, list_models, register_model
from ablation.placement import PLACEMENTS, parse_placement, register_policy, select_sites
from ablation.site_stats import activation_stats
from ablation.site_kinds import SITE_KINDS
from ablation.sites import Site, assign_stages, describe_replaced
from ablation.surgery import NoSiteError, apply_placement, list_sites


def list_generators() -> list[str]:
    """The registered beta-generator names, sorted."""
    return GENERATORS.names()


def list_placements() -> list[str]:
    """The registered placement-policy names, sorted (parameterised ones take ':ARG')."""
    return PLACEMENTS.names()


__all__ = [
    "GENERATORS", "MODELS", "NoSiteError", "PLACEMENTS", "SITE_KINDS", "Site", "activation_stats", "apply_placement", "assign_stages", "build_model",
    "describe_replaced",
    "create_model", "default_input_size", "generator_complexity", "get_generator", "list_generators", "list_models",
    "list_placements", "list_sites", "parse_placement", "register_generator", "register_model", "register_policy",
    "select_sites",
]
