"""How much of timm the design space covers: one model per architecture family (the smallest variant), each built
with meta-ACON at every site for every generator and run forward and backward at a small input.

    python benchmarks/timm_coverage.py [--size 64] [--generators channel,layer,pixel,learned,fixed] [--only convnext,vgg]

Prints one line per family (its model, then ok or each generator's failure) and the share that builds for every
generator. Needs timm (pip install -e '.[timm]'); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time

import torch

from ablation.timm_models import check_model, families, smallest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--generators", default="channel,layer,pixel,learned,fixed")
    p.add_argument("--only", help="comma-separated families (default: all)")
    args = p.parse_args()
    torch.set_num_threads(2)
    generators = args.generators.split(",")
    fams = families()
    if args.only:
        fams = {k: v for k, v in fams.items() if k in args.only.split(",")}
    ok, failures, start = 0, [], time.perf_counter()
    for family, names in fams.items():
        name = smallest(names)
        reasons = {g: r for g in generators if (r := check_model(name, g, size=args.size)) is not None}
        ok += not reasons
        if reasons:
            failures.append(family)
        text = "ok" if not reasons else "; ".join(f"{g}: {r}" for g, r in reasons.items())
        print(f"{family:28s} {name:36s} {text}", flush=True)
    n = len(fams)
    print(f"\n{ok} of {n} families ({100 * ok / max(n, 1):.1f}%) build and train one step for every generator "
          f"({', '.join(generators)}) at {args.size}x{args.size}; {time.perf_counter() - start:.0f} s")
    if failures:
        print("failing: " + ", ".join(failures))


if __name__ == "__main__":
    main()
