"""Speed and backward memory of the ACON family, fused kernels against the plain reference.

For ACON-A/B/C and meta-ACON (layer, channel, pixel) prints forward and forward+backward
medians as ratios to SiLU and to the reference, the spread of the forward+backward ratio to
SiLU across rounds (min / max of the per-round ratios), and the bytes per input element
autograd keeps for backward. Usage: ``python benchmarks/activations.py [--shape 64,64,32,32]
[--device cpu] [--dtype float32] [--threads 2] [--rounds 3] [--variants acon_c,meta_acon_channel]
[--gate hard_sigmoid] [--compare-compile] [--amp] [--smoke]``.

``--amp`` measures what mixed-precision training runs: x in ``--dtype`` (bf16 or fp16, as a conv
under autocast hands it over), the modules' parameters in float32, every call under
``torch.autocast``. Without it the modules are cast to ``--dtype`` as a whole.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.benchmark import Timer

from acon import _fused, _fused_cpu
from acon.beta import LayerBeta, PixelBeta
from acon.functional import GATES
from acon.modules import AconA, AconB, AconC, MetaAcon, MetaAconC

VARIANTS = {
    "acon_a": lambda c, gate: AconA(c),
    "acon_b": lambda c, gate: AconB(c),
    "acon_c": lambda c, gate: AconC(c, gate=gate),
    "meta_acon_layer": lambda c, gate: MetaAcon(c, LayerBeta(c), gate=gate),
    "meta_acon_channel": lambda c, gate: MetaAconC(c, r=min(16, c), gate=gate),
    "meta_acon_pixel": lambda c, gate: MetaAcon(c, PixelBeta(c), gate=gate),
}
BASELINES = {"silu": lambda c: nn.SiLU(), "relu": lambda c: nn.ReLU()}


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options: shape, device, dtype, threads, rounds, seconds per measurement."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="64,64,32,32", help="input shape N,C,... (channels first)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, default=3, help="measure every variant this many times, interleaved")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per Timer measurement")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--gate", default="sigmoid", choices=GATES, help="ACON-C / meta-ACON gate")
    p.add_argument("--compare-compile", action="store_true",
                   help="add torch.compile of the plain formula (the reference module, fused kernels off)")
    p.add_argument("--smoke", action="store_true", help="tiny shape, 2 short rounds: checks that every part runs")
    p.add_argument("--amp", action="store_true",
                   help="autocast: x in --dtype (bfloat16 or float16), parameters float32, as in mixed-precision training")
    args = p.parse_args(argv)
    if args.amp and args.dtype not in ("bfloat16", "float16"):
        p.error(f"--amp takes --dtype bfloat16 or float16, got {args.dtype}")
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; valid choices: {', '.join(sorted(VARIANTS))}")
    if args.smoke:
        args.shape, args.rounds, args.min_run_time = "2,8,4,4", 2, 0.01
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_time_costs(device: torch.device, x: torch.Tensor) -> dict[str, float]:
    """Seconds to build the CPU kernels from scratch, and for the first fused call in this process."""
    costs = {}
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _fused_cpu.build(directory=Path(tmp))
            costs["cold C++ build (s)"] = time.perf_counter() - t0
    mod = AconC(x.shape[1]).to(device=device, dtype=x.dtype)
    t0 = time.perf_counter()
    mod(x.requires_grad_()).sum().backward()
    _sync(device)
    costs["first fused call incl. load/JIT (s)"] = time.perf_counter() - t0
    x.requires_grad_(False)
    return costs


def saved_bytes_per_element(mod: nn.Module, x: torch.Tensor, amp: bool = False) -> float:
    """Bytes of the tensors autograd saves for backward during one forward, per element of x."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    xg = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(x, amp):
        mod(xg)
    return total[0] / x.numel()


def _autocast(x: torch.Tensor, amp: bool):
    return torch.autocast(x.device.type, dtype=x.dtype, enabled=amp)


def measure(mod: nn.Module, x: torch.Tensor, min_run_time: float, amp: bool = False) -> tuple[float, float]:
    """Median seconds of forward (no grad) and of forward+backward (under autocast with ``amp``)."""
    xg = x.detach().requires_grad_()
    # under autocast the output may be float32 (the formula's promotion): the gradient takes its dtype
    with _autocast(x, amp):
        g = torch.randn_like(mod(x))
    env = {"mod": mod, "torch": torch, "autocast": _autocast, "amp": amp}
    fwd = Timer("with torch.no_grad(), autocast(x, amp): mod(x)", globals={**env, "x": x})
    # dropping x.grad each time keeps gradient accumulation (an extra pass) out of the timing
    both = Timer("x.grad = None\nwith autocast(x, amp): y = mod(x)\ny.backward(g)", globals={**env, "x": xg, "g": g})
    return fwd.blocked_autorange(min_run_time=min_run_time).median, both.blocked_autorange(min_run_time=min_run_time).median


def _rows(args, x: torch.Tensor) -> list[tuple[str, str, nn.Module]]:
    """(variant, implementation, module) for every measured line, modules on x's device and dtype."""
    c = x.shape[1]
    rows = [(name, "torch", make(c)) for name, make in BASELINES.items()]
    pdt = torch.float32 if args.amp else x.dtype  # under --amp the parameters stay float32
    for name in args.variants.split(","):
        mod = VARIANTS[name](c, args.gate).to(device=x.device, dtype=pdt)
        rows += [(name, "reference", mod), (name, "fused", mod)]
        if args.compare_compile:  # compiled under use_fused(False): the plain formula, fused by inductor
            rows.append((name, "compiled ref", torch.compile(mod)))
    return [(n, impl, m.to(device=x.device, dtype=pdt)) for n, impl, m in rows]


def run(args) -> tuple[pd.DataFrame, dict[str, float]]:
    """Measure every variant ``args.rounds`` times, interleaved; return the table and one-time costs."""
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    x = torch.randn(tuple(int(s) for s in args.shape.split(",")), device=device, dtype=dtype)
    costs = one_time_costs(device, x)
    rows = _rows(args, x)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(n, i): [] for n, i, _ in rows}
    memory = {}
    for round_ in range(1, args.rounds + 1):
        for name, impl, mod in rows:
            with _fused.use_fused(impl == "fused"):
                times[(name, impl)].append(measure(mod, x, args.min_run_time, args.amp))
                memory[(name, impl)] = saved_bytes_per_element(mod, x, args.amp)
        # as it goes, so a run cut short by a time limit still leaves numbers
        silu = times[("silu", "torch")][-1][1]
        print(f"round {round_}: fwd+bwd / SiLU " + ", ".join(f"{n} {i} {v[-1][1] / silu:.2f}" for (n, i), v in times.items()), flush=True)
    return _table(times, memory), costs


def _table(times, memory) -> pd.DataFrame:
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    silu = med[("silu", "torch")]
    out = []
    for (name, impl), (f, fb) in med.items():
        ref = med.get((name, "reference"), (f, fb))
        # the ratio to SiLU measured in each round (SiLU runs in the same round): its spread across rounds
        per_round = [t[1] / s[1] for t, s in zip(times[(name, impl)], times[("silu", "torch")])]
        out.append({
            "variant": name, "impl": impl, "fwd ms": f * 1e3, "fwd+bwd ms": fb * 1e3,
            "fwd / SiLU": f / silu[0], "fwd+bwd / SiLU": fb / silu[1],
            "min": min(per_round), "max": max(per_round),
            "fwd / ref": f / ref[0], "fwd+bwd / ref": fb / ref[1],
            "saved B/elem": memory[(name, impl)],
        })
    return pd.DataFrame(out)


def main(argv=None) -> None:
    """Run the benchmark and print a Markdown table."""
    args = parse_args(argv)
    table, costs = run(args)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    precision = f"{args.dtype} x under autocast, float32 parameters" if args.amp else args.dtype
    print(f"shape {args.shape}, {precision}, gate {args.gate}, {dev}, torch {torch.__version__}, median of {args.rounds} rounds; "
          "min / max: the per-round fwd+bwd / SiLU ratio")
    print(table.to_markdown(index=False, floatfmt=".2f"))
    for k, v in costs.items():
        print(f"one-time: {k} = {v:.2f}")


if __name__ == "__main__":
    main()
