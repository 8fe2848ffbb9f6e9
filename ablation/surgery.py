"""Call-site model surgery: give each selected activation call its own new module.

The model is traced with torch.fx; each selected call node is replaced by a call of a fresh
module built for that site's width. A maker that declares an ``original`` keyword also gets
the activation module it replaces (a module made from the call for a functional site). The result is an ``fx.GraphModule`` that keeps the original
parameter names, so a freshly built model of the same spec loads its state_dict (strict).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable, Sequence

from torch import fx, nn

from acon.registry import ConfigError
from ablation.placement import select_sites
from ablation.site_finder import find_sites, unreplaced_calls
from ablation.site_kinds import SITE_KINDS, kind_of
from ablation.site_tracing import propagate_shapes, trace
from ablation.sites import Site, Sites, describe_replaced

MakeActivation = Callable[..., nn.Module]  # make(site) or make(site, *, original)


def list_sites(model: nn.Module, input_shape: Sequence[int], *, kinds: Sequence[str] | None = None) -> list[Site]:
    """Every candidate activation site of ``model`` for an input of ``input_shape`` (batch included); the calls
    that are no site are its ``unreplaced`` (see ``ablation.sites.Sites``)."""
    gm = trace(model)
    propagate_shapes(gm, input_shape)
    return Sites([site for site, _ in _with_targets(gm, find_sites(gm, kinds))], unreplaced_calls(gm, kinds))


def apply_placement(
    model: nn.Module,
    make_activation: MakeActivation,
    placement: object = "all",
    *,
    input_shape: Sequence[int],
    kinds: Sequence[str] | None = None,
    model_name: str | None = None,
    copy_model: bool = True,
) -> tuple[nn.Module, list[Site]]:
    """Replace the sites ``placement`` selects by ``make_activation(site)``; return (model, changed sites).

    ``placement`` is a policy name (``"first:4"``) or a callable policy. A policy that selects no
    site is refused (use ``"none"`` for the baseline, which returns the model untouched).
    ``kinds`` limits the candidate activations (default: every kind in ``SITE_KINDS``).
    ``make_activation(site, original=module)`` is called when it declares ``original``.
    In-place calls are handled: later readers of an in-place call's input read the new output.
    The changed sites are a ``Sites`` list: its ``unreplaced`` are the model's activation calls that are no site.
    """
    if placement == "none":
        return model, Sites()
    gm = trace(copy.deepcopy(model) if copy_model else model)
    propagate_shapes(gm, input_shape)
    candidates = _with_targets(gm, find_sites(gm, kinds))
    left = unreplaced_calls(gm, kinds)
    chosen = select_sites(placement, [s for s, _ in candidates])
    if not chosen:
        every = [s for s, _ in find_sites(gm)] if kinds is not None else [s for s, _ in candidates]
        raise NoSiteError(_no_site_message(model_name or type(model).__name__, placement, [s for s, _ in candidates], every))
    nodes = {s.index: n for s, n in candidates}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    wants_original = declares_keyword(make_activation, "original")
    for site in chosen:
        node = nodes[site.index]
        extra = {"original": original_module(gm, node, site)} if wants_original else {}
        _replace(gm, node, site, make_activation(site, **extra), order)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, Sites(chosen, left)


class NoSiteError(ConfigError):
    """A placement that selects no activation site of a model (a ValueError, as before)."""


def _no_site_message(name: str, placement: object, sites: list[Site], every: list[Site]) -> str:
    stages = sorted({s.stage for s in sites})
    kinds = describe_replaced(every) or "none"
    return (
        f"placement {placement!r} selects no activation site of model {name!r} "
        f"({len(sites)} candidate sites, stages {stages}; its activations: {kinds}); use placement='none' for the baseline"
    )


def declares_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` names the keyword ``name`` in its signature (a bare ``**kwargs`` does not count)."""
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return param is not None and param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def original_module(gm: fx.GraphModule, node: fx.Node, site: Site) -> nn.Module:
    """The activation module a site calls; for a function or method call, the module of its kind made
    from the call's keyword arguments (``F.gelu(x, approximate="tanh")`` -> ``nn.GELU(approximate="tanh")``)."""
    if node.op == "call_module":
        return gm.get_submodule(node.target if _calls_site(gm, node) else site.path)
    cls = SITE_KINDS[site.replaced][0][0]
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in node.kwargs.items() if k in accepted and k != "inplace" and not isinstance(v, fx.Node)})


def _with_targets(gm: fx.GraphModule, found: list[tuple[Site, fx.Node]]) -> list[tuple[Site, fx.Node]]:
    """Fill each site's ``target``: the path of its own module in the changed model."""
    taken: set[str] = set()
    out = []
    for site, node in found:
        target = _target_name(gm, site, node, taken)
        taken.add(target)
        out.append((dataclasses.replace(site, target=target), node))
    return out


def _target_name(gm: fx.GraphModule, site: Site, node: fx.Node, taken: set[str]) -> str:
    """A single-call module keeps its path (replaced in place); a shared one gets ``path_k`` siblings."""
    if node.op == "call_module" and "#" not in site.path:
        return site.path
    name = site.path.replace("#", "_")
    while name in taken or _exists(gm, name):
        name += "_site"
    return name


def _exists(gm: fx.GraphModule, path: str) -> bool:
    parent, _, leaf = path.rpartition(".")
    try:
        owner = gm.get_submodule(parent) if parent else gm
    except AttributeError:
        return False
    return hasattr(owner, leaf)


def _calls_site(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is the site's own call (else it calls a block kept whole, and the site is inside it)."""
    return kind_of(gm, node) is not None


def _replace(gm: fx.GraphModule, node: fx.Node, site: Site, module: nn.Module, order: dict[fx.Node, int]) -> None:
    """Swap ``node`` for a call of ``module`` at ``site.target``; inside a block kept whole, swap the module."""
    inside_block = not _calls_site(gm, node)
    gm.add_submodule(site.target, module)
    if inside_block:
        return
    inp = node.args[0]
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(site.target, args=(inp,))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    if site.inplace and isinstance(inp, fx.Node):
        # The old call overwrote its input; readers after it saw the activated tensor.
        for user in list(inp.users):
            if user is not new and order.get(user, -1) > order[node]:
                user.replace_input_with(inp, new)
    order[new] = order[node]
    gm.graph.erase_node(node)
