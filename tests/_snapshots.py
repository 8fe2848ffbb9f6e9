"""Snapshots of the design space: exact parameter counts and site lists our code gives for a few models.

They pin today's behaviour, not the paper (``test_complexity`` checks the paper's figures).
``python tests/_snapshots.py`` rewrites ``tests/snapshots/*.json``; ``--check`` compares instead
and exits 1 on a difference. Shape propagation runs on fake tensors, so big models stay cheap.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ablation.build import build_model

#: record name -> build_model keyword arguments (the baseline uses the same model arguments).
SPECS: dict[str, dict[str, Any]] = {
    "resnet50_bottleneck_3x3_r16": dict(name="resnet50", placement="bottleneck_3x3", r=16, num_classes=1000),
    "shufflenet_v2_x0_5_all_r8": dict(name="shufflenet_v2_x0_5", placement="all", r=8, num_classes=1000),
    "resnet20_all_r16": dict(name="resnet20", placement="all", r=16, num_classes=10),
    "tiny_cnn_all_r4": dict(name="tiny_cnn", placement="all", r=4, num_classes=10, in_channels=1),
}

_MODEL_ARGS = ("name", "num_classes", "in_channels", "small_input", "input_size")
DEFAULT_DIR = Path(__file__).resolve().parent / "snapshots"
REGENERATE = "python tests/_snapshots.py"


def record(spec: dict[str, Any]) -> dict[str, Any]:
    """The snapshot of one spec: params before/after and the changed sites."""
    baseline, _ = build_model(**{k: v for k, v in spec.items() if k in _MODEL_ARGS}, activation="relu", placement="none")
    model, sites = build_model(**spec)
    return {
        "spec": spec,
        "params_baseline": _count(baseline),
        "params": _count(model),
        "site_columns": ["index", "path", "width", "spatial", "stage", "target", "replaced"],
        "sites": [s.as_row() for s in sites],
    }


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _dumps(rec: dict[str, Any]) -> str:
    """JSON with one site per line, so a diff shows which sites changed."""
    head = json.dumps({k: v for k, v in rec.items() if k != "sites"}, indent=1)[:-2]
    rows = ",\n".join("  " + json.dumps(row) for row in rec["sites"])
    return f'{head},\n "sites": [\n{rows}\n ]\n}}\n'


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) every snapshot."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)
    failed = 0
    for name, spec in SPECS.items():
        path = args.dir / f"{name}.json"
        rec = record(spec)
        if args.check:
            same = path.exists() and json.loads(path.read_text()) == rec
            failed += not same
            print(f"{'ok  ' if same else 'DIFF'} {path}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_dumps(rec))
            print(f"wrote {path}: {rec['params_baseline']} -> {rec['params']} params, {len(rec['sites'])} sites")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
