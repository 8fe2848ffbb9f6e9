"""How much of timm the design space covers: timm's architecture families and their smallest variants, the sites
found in a timm model against the activation calls timm's own model makes (``site_coverage``), and whether it
trains with meta-ACON at every site (``check_model``). ``benchmarks/timm_coverage.py`` prints them for all of timm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ablation.build import build_model
from ablation.site_calls import activation_calls
from ablation.surgery import list_sites
from ablation.timm_models import PREFIX, timm_entry, timm_module, timm_original


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
    with torch.device(device):
        x = torch.randn(1, 3, size, size)
        calls = activation_calls(timm_original(name, input_size=size).eval(), x)
        model = timm_entry(PREFIX + name).obj(num_classes=10, input_size=size)
    sites = list_sites(model, tuple(x.shape))
    gates = sum(c.gate for c in calls)
    return Coverage(name, len(sites), len(sites.unreplaced), len(calls) - gates, size, gates)


def _check(name: str, generator: str, size: int, num_classes: int) -> str | None:
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
