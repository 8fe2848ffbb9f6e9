"""Training throughput of one model with ReLU, with meta-ACON (acon.MetaAconC) and with a plain reference.

``throughput`` (default): CIFAR ResNet-20 at 32x32 on synthetic data, images/s per variant and their
ratios, measured in one run, round-robin so that load from other processes hits every variant alike.
``headroom``: short-schedule validation accuracy of ReLU / SiLU / meta-ACON on the embedded datasets,
to check that a dataset is not saturated (the activations must be able to differ).

    python benchmarks/train_throughput.py --device cuda --images 20000
    python benchmarks/train_throughput.py headroom --threads 2

Seen on one H100 (torch 2.11, bf16 autocast, batch 128, 10k images): ReLU 11.8k images/s, meta-ACON 2.56k
(0.22x), reference 2.99k (0.25x). On 2 CPU threads of that machine: meta-ACON 0.62x ReLU, reference 0.47x.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import acon
from ablation import build_model
from studies.data import DataSplits, TensorSplit, load_dataset
from studies.train import TrainConfig, resolve_device, train


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


def variants(name: str, seed: int) -> dict[str, nn.Module]:
    """The three models to compare, built from the same seed."""
    common = dict(num_classes=10, in_channels=3, small_input=True)
    torch.manual_seed(seed)
    relu, _ = build_model(name, activation="relu", placement="none", **common)
    torch.manual_seed(seed)
    meta, sites = build_model(name, activation="meta_acon", generator="channel", r=16, placement="all", **common)
    torch.manual_seed(seed)
    ref = with_reference_modules(build_model(name, activation="meta_acon", generator="channel", r=16, placement="all", **common)[0])
    if not any(isinstance(m, ReferenceMetaAconC) for m in ref.modules()):
        raise RuntimeError(f"{name}: no acon.MetaAconC module found to replace; is the placement wrapping them?")
    _check_same_function(meta, ref)
    print(f"{name}: {len(sites)} meta-ACON sites; reference matches acon.MetaAconC")
    return {"relu": relu, "meta_acon": meta, "reference": ref}


@torch.no_grad()
def _check_same_function(model: nn.Module, reference: nn.Module) -> None:
    """The reference must compute what our module computes, or the timing compares different things."""
    x = torch.randn(4, 3, 32, 32)
    got, want = model.eval()(x), reference.eval()(x)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"reference differs from acon.MetaAconC by {(got - want).abs().max().item():.3g}")


def synthetic_cifar(n: int, seed: int = 0) -> DataSplits:
    """Random 32x32 RGB images and labels shaped like CIFAR-10 (throughput does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    val = TensorSplit(x[:256], y[:256])
    return DataSplits(TensorSplit(x, y), val, None, 10, 3, 32, "synthetic32", (127.5,) * 3, (73.9,) * 3)


def throughput(args) -> None:
    """Round-robin timing of the three variants; prints images/s and ratios."""
    data = synthetic_cifar(args.images)
    models = variants(args.model, args.seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, device=args.device, amp=args.amp,
                      channels_last=args.channels_last, augment=args.augment, threads=args.threads, seed=args.seed)
    speeds: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            history = train(model, data, cfg).history[1:]  # epoch 1 pays for allocation and autotuning
            speeds[name].append(sum(m.images_per_s * m.epoch_time_s for m in history) / sum(m.epoch_time_s for m in history))
    device = resolve_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads or torch.get_num_threads()} threads"
    print(f"device: {label}; batch {args.batch_size}, amp {args.amp and device.type == 'cuda'}, channels_last {args.channels_last}")
    med = {k: statistics.median(v) for k, v in speeds.items()}
    for name, v in speeds.items():
        print(f"  {name:10s} {med[name]:10.0f} images/s   (rounds: {', '.join(f'{s:.0f}' for s in v)})")
    print(f"  meta_acon / relu      = {med['meta_acon'] / med['relu']:.3f}")
    print(f"  reference / relu      = {med['reference'] / med['relu']:.3f}")
    print(f"  meta_acon / reference = {med['meta_acon'] / med['reference']:.3f}")


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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--augment", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="headroom: seeds per activation")
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"], help="headroom: datasets to compare")
    args = p.parse_args(argv)
    if args.mode == "throughput" and args.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch is warm-up and is not counted")
    (headroom if args.mode == "headroom" else throughput)(args)


if __name__ == "__main__":
    main()
