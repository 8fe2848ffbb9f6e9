"""How much of timm the design space covers: one model per architecture family (the smallest variant), its sites
found against the activation calls timm's own model makes, counted at run time at the function level (module and
functional calls alike, gates left out), and whether it trains with meta-ACON at every site for each generator.

    python benchmarks/timm_coverage.py [--size 64] [--generators channel] [--only convnext,vgg]

Prints one line per family: its model, sites found / calls counted (and calls the builder left unreplaced), then ok
or each generator's failure; then the families where every site is found, out of all. ``--generators ''`` skips the
training check; ``--generators channel,layer,pixel,learned,fixed`` runs all five. Needs timm; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

from ablation.build import UnreplacedWarning
from ablation.timm_survey import check_model, families, site_coverage, smallest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--generators", default="channel")
    p.add_argument("--only", help="comma-separated families (default: all)")
    args = p.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore", UnreplacedWarning)  # the sites column says it, per family
    generators = [g for g in args.generators.split(",") if g]
    fams = families()
    if args.only:
        fams = {k: v for k, v in fams.items() if k in args.only.split(",")}
    complete, trains, start = [], [], time.perf_counter()
    for family, names in fams.items():
        name = smallest(names)
        found = _found(name, args.size)
        reasons = {g: r for g in generators if (r := check_model(name, g, size=args.size)) is not None}
        if found.startswith("all "):
            complete.append(family)
        if not reasons:
            trains.append(family)
        text = "ok" if not reasons else "; ".join(f"{g}: {r}" for g, r in reasons.items())
        print(f"{family:25s} {name:30s} {found:42s} {text}", flush=True)
    n = len(fams)
    print(f"\nfamilies where every site is found: {len(complete)} of {n} ({100 * len(complete) / max(n, 1):.1f}%)")
    if generators:
        print(f"families that train one step for every generator ({', '.join(generators)}) at {args.size}x{args.size}: "
              f"{len(trains)} of {n}")
    print(f"{time.perf_counter() - start:.0f} s; not every site found: "
          f"{', '.join(f for f in fams if f not in complete) or 'none'}")


def _found(name: str, size: int) -> str:
    """``all 34 of 34 calls``, ``24 of 32 calls (8 unreplaced, 4 gates, @224)``, or why the count failed."""
    try:
        c = site_coverage(name, size=size)
    except Exception as e:
        return f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:60]}"
    extra = [f"{c.unreplaced} unreplaced"] * bool(c.unreplaced) + [f"{c.gates} gates"] * bool(c.gates)
    extra += [f"@{c.size}"] * (c.size != size)
    return f"{'all ' if c.complete else ''}{c.sites} of {c.calls} calls" + (f" ({', '.join(extra)})" if extra else "")


if __name__ == "__main__":
    main()
