"""What recording the per-site activation statistics costs a quick-study trial, measured side by side.

For each ACON design of the quick ``design_space`` study (tiny_cnn on the embedded MNIST-5k, 5 epochs, batch 64)
and each round: train a fresh model as a trial does, then measure it on the held-out images as a trial does
(``act_images``, default 2048). Prints the measurement's time as a share of the training time, per design and
round; the trial's wall time is longer than its training, so the share of a trial is smaller still.

    python benchmarks/activation_stats.py [--rounds 3] [--epochs 5] [--images 2048] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from studies.settings import Settings
from studies.run.build import build_variant, load_data, train_config
from studies.training.held_out import measure_held_out
from studies.training.loop import train

DESIGNS = ({"activation": "acon_c"}, {"activation": "meta_acon", "generator": "layer"},
           {"activation": "meta_acon", "generator": "channel", "r": 8}, {"activation": "meta_acon", "generator": "pixel"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=Settings().act_images)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(epochs=args.epochs)
    data = load_data(settings["dataset"], None, False, None)
    print(f"tiny_cnn on {data.name} ({len(data.train)} train, {len(data.val)} held-out images), "
          f"{args.epochs} epochs; measured on min({args.images}, {len(data.val)}) images")
    shares = []
    for design in DESIGNS:
        cell = {"placement": "all", "seed": 0, **design}
        row = []
        for _ in range(args.rounds):
            model, sites = build_variant(cell, settings, data)
            start = time.perf_counter()
            train(model, data, train_config(settings, seed=0, device="cpu", threads=args.threads))
            trained = time.perf_counter() - start
            start = time.perf_counter()
            measure_held_out(model, data, images=args.images, batch_size=settings["eval_batch_size"], sites=sites)
            row.append((time.perf_counter() - start) / trained)
        shares += row
        label = "/".join(str(v) for k, v in design.items())
        print(f"{label:24s} measurement / training: " + "  ".join(f"{100 * s:.2f}%" for s in row))
    print(f"median over designs and rounds: {100 * statistics.median(shares):.2f}% (target: at most 3%)")


if __name__ == "__main__":
    main()
