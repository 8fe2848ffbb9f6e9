"""Training throughput of one model with ReLU, with meta-ACON (acon.MetaAconC) and with a plain reference.

``throughput`` (default): CIFAR ResNet-20 at 32x32 on synthetic data, images/s per variant and their
ratios, measured in one run, round-robin so that load from other processes hits every variant alike.
``headroom``: short-schedule validation accuracy of ReLU / SiLU / meta-ACON on the embedded datasets,
to check that a dataset is not saturated (the activations must be able to differ).

    python benchmarks/train_throughput.py --device cuda --images 20000
    python benchmarks/train_throughput.py --device cuda --model resnet50 --image-size 224 --batch 64 --placement bottleneck_3x3
    python benchmarks/train_throughput.py --threads 2 --rounds 5 --also silu,acon_c
    python benchmarks/train_throughput.py --model tiny_cnn --in-channels 1 --image-size 28 --batch 64 --compare-compile
    python benchmarks/train_throughput.py headroom --threads 2

``--compare-compile`` adds each variant trained with ``TrainConfig(compile=...)`` and prints the compile cost
(first epoch minus a steady epoch) against the time saved per steady epoch.

Seen on one H100 (torch 2.11, bf16 autocast, batch 128, 10k images): ReLU 11.8k images/s, meta-ACON 2.56k
(0.22x), reference 2.99k (0.25x). On 2 CPU threads of that machine: meta-ACON 0.62x ReLU, reference 0.47x.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

import acon
from ablation import build_model
from studies.data import DataSplits, TensorSplit, load_dataset
from studies.training.loop import TrainConfig, resolve_device, train


class ReferenceMetaAconC(nn.Module):
    """meta-ACON as written in the official release: plain PyTorch ops, beta from two BN'd 1x1 convs."""

    def __init__(self, width: int, r: int = 16):
        super().__init__()
        hidden = max(r, width // r)
        self.fc1 = nn.Conv2d(width, hidden, kernel_size=1, stride=1, bias=True)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, width, kernel_size=1, stride=1, bias=True)
        self.bn2 = nn.BatchNorm2d(width)
        self.p1 = nn.Parameter(torch.randn(1, width, 1, 1))
        self.p2 = nn.Parameter(torch.randn(1, width, 1, 1))

    def forward(self, x):
        if x.dim() == 2:  # a site after global pooling (tiny_cnn's head): (N, C) as (N, C, 1, 1)
            return self.forward(x[:, :, None, None])[:, :, 0, 0]
        beta = torch.sigmoid(self.bn2(self.fc2(self.bn1(self.fc1(x.mean(dim=2, keepdim=True).mean(dim=3, keepdim=True))))))
        dpx = (self.p1 - self.p2) * x
        return dpx * torch.sigmoid(beta * dpx) + self.p2 * x


def with_reference_modules(model: nn.Module) -> nn.Module:
    """Replace every ``acon.MetaAconC`` in ``model`` by a ``ReferenceMetaAconC`` holding the same weights."""
    for name, module in list(model.named_modules()):
        if isinstance(module, acon.MetaAconC):
            ref = ReferenceMetaAconC(module.channels, module.r)
            ref.load_state_dict(module.state_dict())
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, ref)
    return model


def variants(name: str, seed: int, *, placement: str = "all", in_channels: int = 3, image_size: int = 32, r: int = 16,
             also: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """The models to compare, built from the same seed: ReLU, meta-ACON, the reference, and ``also``
    (activation names, e.g. silu and acon_c: what a smooth activation without a generator costs)."""
    common = dict(num_classes=10, in_channels=in_channels, small_input=image_size < 64, input_size=image_size)
    meta_acon = dict(activation="meta_acon", generator="channel", r=r, placement=placement, **common)
    torch.manual_seed(seed)
    relu, _ = build_model(name, activation="relu", placement="none", **common)
    torch.manual_seed(seed)
    meta, sites = build_model(name, **meta_acon)
    torch.manual_seed(seed)
    ref = with_reference_modules(build_model(name, **meta_acon)[0])
    if not any(isinstance(m, ReferenceMetaAconC) for m in ref.modules()):
        raise RuntimeError(f"{name}: no acon.MetaAconC module found to replace; is the placement wrapping them?")
    _check_same_function(meta, ref, (2, in_channels, image_size, image_size))
    print(f"{name}: {len(sites)} meta-ACON sites; reference matches acon.MetaAconC")
    models = {"relu": relu, "meta_acon": meta, "reference": ref}
    for activation in also:
        torch.manual_seed(seed)
        models[activation] = build_model(name, activation=activation, placement=placement, **common)[0]
    return models


@torch.no_grad()
def _check_same_function(model: nn.Module, reference: nn.Module, shape) -> None:
    """The reference must compute what our module computes, or the timing compares different things."""
    x = torch.randn(shape)
    got, want = model.eval()(x), reference.eval()(x)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"reference differs from acon.MetaAconC by {(got - want).abs().max().item():.3g}")


def synthetic_cifar(n: int, seed: int = 0, *, channels: int = 3, size: int = 32) -> DataSplits:
    """Random square images and 10 labels shaped like CIFAR-10 by default (throughput does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    val = TensorSplit(x[:256], y[:256])
    return DataSplits(TensorSplit(x, y), val, None, 10, channels, size, f"synthetic{size}", (127.5,) * channels, (73.9,) * channels)


def throughput(args) -> None:
    """Round-robin timing of the variants; prints images/s, ratios and (with --compare-compile) compile costs."""
    data = synthetic_cifar(args.images, channels=args.in_channels, size=args.image_size)
    models = variants(args.model, args.seed, placement=args.placement, in_channels=args.in_channels, image_size=args.image_size, r=args.r,
                      also=tuple(a for a in args.also.split(",") if a))
    amp = args.amp and args.dtype != "float32"
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, device=args.device, amp=amp,
                      channels_last=args.channels_last, augment=args.augment, threads=args.threads, seed=args.seed)
    runs = [(name, model, False) for name, model in models.items()]
    if args.compare_compile:
        runs += [(f"{name}+compile", models[name], args.compile_mode) for name in ("relu", "meta_acon")]
    speeds: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    compile_s: dict[str, list[float]] = {name: [] for name, _, mode in runs if mode}
    for round_ in range(1, args.rounds + 1):
        for name, model, mode in runs:
            history = train(model, data, dataclasses.replace(cfg, compile=mode)).history
            steady = history[1:]  # epoch 1 pays for allocation, autotuning and compilation
            speeds[name].append(sum(m.images_per_s * m.epoch_time_s for m in steady) / sum(m.epoch_time_s for m in steady))
            # as it goes, so a run cut short by a time limit still leaves numbers
            print(f"round {round_} {name}: {speeds[name][-1]:.0f} images/s, first epoch {history[0].epoch_time_s:.1f} s", flush=True)
            if mode:
                compile_s[name].append(history[0].epoch_time_s - statistics.median(m.epoch_time_s for m in steady))
    device = resolve_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads or torch.get_num_threads()} threads"
    print(f"device: {label}; model {args.model} {args.image_size}x{args.image_size}, placement {args.placement}, "
          f"batch {args.batch_size}, amp {amp and device.type == 'cuda'}, channels_last {args.channels_last}")
    med = {k: statistics.median(v) for k, v in speeds.items()}
    for name, v in speeds.items():
        print(f"  {name:18s} {med[name]:10.0f} images/s   (rounds: {', '.join(f'{s:.0f}' for s in v)})")
    pairs = [("meta_acon", "relu"), ("reference", "relu"), ("meta_acon", "reference"), ("meta_acon+compile", "relu+compile"),
             ("meta_acon+compile", "relu")] + [(a, "relu") for a in models if a not in ("relu", "meta_acon", "reference")]
    for a, b in pairs:
        if a in med and b in med:
            print(f"  {a} / {b} = {med[a] / med[b]:.3f}  (images/s ratio; step time is its inverse)")
    for name, secs in compile_s.items():
        base = name.removesuffix("+compile")
        saved = args.images / med[base] - args.images / med[name]  # seconds saved per steady epoch
        print(f"  {name}: compile cost {statistics.median(secs):.1f} s, saves {saved:.2f} s per epoch of {args.images} "
              f"images: pays after {statistics.median(secs) / saved:.1f} epochs" if saved > 0 else
              f"  {name}: compile cost {statistics.median(secs):.1f} s, and a steady epoch is {-saved:.2f} s slower: never pays")


def headroom(args) -> None:
    """Validation accuracy after a short schedule on each embedded dataset, per activation (mean over seeds)."""
    for dataset in args.datasets:
        data = load_dataset(dataset, seed=0)
        for activation in ("relu", "silu", "meta_acon"):
            accs, secs = [], []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model, _ = build_model("tiny_cnn", activation=activation, r=4, placement="none" if activation == "relu" else "all",
                                       num_classes=data.num_classes, in_channels=data.in_channels, input_size=data.image_size)
                start = time.perf_counter()
                cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.1, device=args.device, threads=args.threads, seed=seed)
                accs.append(train(model, data, cfg).final["val_acc"])
                secs.append(time.perf_counter() - start)
            params = sum(p.numel() for p in model.parameters())
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"{dataset:8s} {activation:9s} params {params:6d}  val_acc {statistics.mean(accs):.4f} +- {spread:.4f} "
                  f"(n={len(accs)}, min {min(accs):.4f})  {statistics.mean(secs):.1f} s/trial")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run one mode."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="throughput", choices=("throughput", "headroom"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--images", type=int, default=2048, help="synthetic training images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is warm-up and not counted")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", "--batch", type=int, default=128)
    p.add_argument("--placement", default="all", help="meta-ACON placement (resnet50: bottleneck_3x3, as the paper)")
    p.add_argument("--image-size", type=int, default=32, help="synthetic image size; under 64 builds the CIFAR stem")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--r", type=int, default=16, help="meta-ACON reduction ratio")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="CUDA: bf16 autocast or full fp32")
    p.add_argument("--also", default="", help="more activations at the same placement, e.g. silu,acon_c (the cost of a smooth gate alone)")
    p.add_argument("--compare-compile", action="store_true", help="also train relu and meta_acon with torch.compile")
    p.add_argument("--compile-mode", default="on", help="TrainConfig.compile value for --compare-compile")
    p.add_argument("--smoke", action="store_true",
                   help="tiny_cnn at 16x16, 64 images, 1 round, batch 16 (compile: aot_eager): checks that every part runs")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--augment", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="headroom: seeds per activation")
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"], help="headroom: datasets to compare")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.epochs, args.rounds, args.batch_size, args.seeds = 64, 2, 1, 16, 1
        args.model, args.image_size, args.r, args.placement = "tiny_cnn", 16, 4, "all"
        args.compile_mode = "aot_eager" if args.compare_compile else args.compile_mode
        args.datasets = ["digits"]
    if args.mode == "throughput" and args.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch is warm-up and is not counted")
    (headroom if args.mode == "headroom" else throughput)(args)


if __name__ == "__main__":
    main()
