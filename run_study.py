#!/usr/bin/env python
"""Command line of the ACON ablation toolkit: list, run, worker, report, overhead, storage-proxy.

Thin by design: each subcommand parses, then calls one public function that a Python user
can call too. A user's mistake (``studies.errors.USER_ERRORS``: the toolkit's ``UserError``, the
activation package's ``ConfigError``) prints one line ``error: ...`` and exits 2;
anything else is a bug and keeps its traceback (exit 1).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from studies.errors import USER_ERRORS, UserError
from studies.run.interrupt import Interrupted
from studies.errors import first_line
from studies.store.storage import mask_url

LISTABLE = ("studies", "generators", "placements", "models", "datasets", "activations")
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_study.py`` / ``acon-study``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args) or 0
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"interrupted ({exc or 'SIGINT'}): the running trial was recorded as failed; rerun the same command "
              "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:  # a bug is any other exception: it keeps its traceback
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def quiet_libraries() -> None:
    """Keep the terminal for our progress bar and tables: libraries log warnings only."""
    import logging

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow warns when git is missing
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow configures its loggers
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="run_study.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_list(sub)
    _add_run(sub)
    _add_worker(sub)
    _add_report(sub)
    _add_overhead(sub)
    _add_storage_proxy(sub)
    return parser


def _add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list studies, generators, placements, models, datasets or activations")
    p.add_argument("what", nargs="?", default="studies", choices=LISTABLE)
    p.add_argument("--timm", action="store_true", help="with models: every timm model, as timm/<name> (needs timm)")
    p.set_defaults(func=cmd_list)


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage URL (default $ACON_STORAGE or sqlite:///optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the study name)")
    p.add_argument("--study-name", help="Optuna study name (default: STUDY-PRESET)")
    p.add_argument("--preset", default="quick", help="quick (CPU, minutes), default, paper (GPU)")


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run (or resume) a study: a built-in name or a path to your study file")
    _add_study_flags(p, "study name (see `list studies`) or a .py file defining STUDY")
    p.add_argument("--max-trials", type=int, help="stop this process after N trials (the rest stay queued)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine (default 1; several share optuna.journal by default)")
    p.add_argument("--gpus", help="spread the workers over these GPUs, e.g. 0,1 (one CUDA_VISIBLE_DEVICES each)")
    p.add_argument("--race", action="store_true",
                   help="race the designs across seeds: 3 seeds each, then one more per round for the designs a test "
                        "has not shown to be worse than the best (--seeds: the most any design gets)")
    p.add_argument("--race-alpha", type=float, default=0.05,
                   help="the race's error level (default 0.05): with friedman, of dropping any design when all tie; "
                        "with t, of dropping the truly best one when paired differences are normal")
    p.add_argument("--race-test", default="friedman", choices=("friedman", "t"),
                   help="friedman: F-Race's ranks within seeds (default); t: paired t-tests, Bonferroni over designs too")
    p.add_argument("--race-futility", type=float, default=0.2,
                   help="settle a contest when its conditional power at the current trend is below this (default "
                        "0.2; 0: never): the design stops spending seeds on it, and no claim is made")
    from studies.run.slurm_config import add_slurm_flags

    add_slurm_flags(p)
    p.set_defaults(func=cmd_run)


def _add_worker(sub: Any) -> None:
    p = sub.add_parser("worker", help="join an existing study from this machine (shared storage and tracking)")
    _add_study_flags(p, "study name or .py file, as given to `run` (pass the same flags too)")
    p.set_defaults(func=cmd_worker)


def _add_study_flags(p: argparse.ArgumentParser, study_help: str) -> None:
    """What `run` and `worker` share: the study, its stores, how to run, and a flag per study setting."""
    from studies.settings import cli_flags
    from studies.training.config import DEVICES

    p.add_argument("study", help=study_help)
    _add_store_flags(p)
    p.add_argument("--data-dir", help="where torchvision datasets or an image folder live")
    p.add_argument("--download", action="store_true", help="download a torchvision dataset into --data-dir")
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument("--threads", type=int, help="torch threads in this process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--outage-limit", metavar="DURATION",
                   help="ride through an Optuna database outage this long, e.g. 90s, 5m (default $ACON_OUTAGE_LIMIT "
                        "or 5m); past it: one error line, exit 2, a rerun resumes")
    settings = p.add_argument_group("study settings (default: the study's and its preset's)")
    for flag, kwargs in cli_flags():
        settings.add_argument(flag, **kwargs)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="ablation table of a study from MLflow")
    p.add_argument("study", help="study name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the study name)")
    p.add_argument("--group-by", help="comma-separated design axes (default: the variant)")
    p.add_argument("--baseline", default="activation=relu", help="baseline row as AXIS=VALUE (default activation=relu)")
    p.add_argument("--metric", help="metric (default: the study's)")
    p.add_argument("--format", default="terminal",
                   help="terminal, markdown (md), csv, latex, html (comma-separated); the first is printed")
    p.add_argument("--out", help="directory to write the tables (and plots) to")
    p.add_argument("--no-log", action="store_true",
                   help="do not update the study's MLflow parent run (artifacts, description, summary metrics)")
    p.add_argument("--plots", action="store_true",
                   help="also draw EDF and learning-curve plots (and parameter importance for search studies)")
    p.add_argument("--activations", action="store_true",
                   help="also show what each design's ACON sites learned: beta and linear fraction by stage (with "
                        "--plots: beta by depth, its spread across inputs, the learned curves)")
    p.add_argument("--fidelity", action="store_true",
                   help="also show how each epoch ranks the designs against the final epoch: Kendall's tau with a "
                        "bootstrap CI, from which epoch the final best leads, designs that cross late, a rank plot")
    p.add_argument("--against", metavar="OTHER",
                   help="also compare the designs' ranking with study OTHER (same designs, another schedule, dataset or "
                        "model; same tracking URI and --experiment): Kendall's tau with a CI and a one-line verdict")
    p.add_argument("--storage", help="Optuna storage, for the importance plot (default $ACON_STORAGE or optuna.db)")
    p.add_argument("--study-name", help="Optuna study name (default: STUDY-PRESET)")
    p.add_argument("--preset", default="quick", help="preset the study ran with (default quick)")
    p.add_argument("--effect", type=float, help="difference to plan seeds for, in the table's units (e.g. 0.5 accuracy "
                   "points; default: each row's observed difference)")
    p.set_defaults(func=cmd_report)


def _add_overhead(sub: Any) -> None:
    p = sub.add_parser("overhead", help="params and FLOPs of variants vs the ReLU model (no training)")
    p.add_argument("--model", default="resnet50", help="comma-separated model names")
    p.add_argument("--generator", default="channel", help="comma-separated beta generators")
    p.add_argument("--r", default="16", help="comma-separated reduction ratios")
    p.add_argument("--placement", default="all", help="comma-separated placements")
    p.add_argument("--activation", default="meta_acon",
                   help="comma-separated activations (default meta_acon), e.g. meta_acon,dy_relu_b,frelu,pau,smu,apa")
    p.add_argument("--input-size", type=int, help="input image size (default: the model's)")
    p.add_argument("--format", default="terminal", help="terminal, markdown, csv, latex, html")
    p.add_argument("--latency", action="store_true", help="also measure forward/backward time ratios")
    p.add_argument("--export", choices=["onnx"], help="also check ONNX export + onnxruntime outputs (needs .[export])")
    p.set_defaults(func=cmd_overhead)


def _add_storage_proxy(sub: Any) -> None:
    p = sub.add_parser("storage-proxy", help="serve an Optuna database to many workers through one gRPC proxy; the "
                       "workers' --storage is then grpc://HOST:PORT (needs .[cluster])")
    p.add_argument("--storage", default=os.environ.get("ACON_STORAGE"), help="the database (default $ACON_STORAGE)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every one)")
    p.add_argument("--port", type=int, default=13000, help="port to listen on (default 13000)")
    p.add_argument("--threads", type=int, default=10, help="calls served at once, hence database connections (10)")
    p.set_defaults(func=cmd_storage_proxy)


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    """Serve the study database at grpc://HOST:PORT until SIGTERM or Ctrl-C."""
    from studies.store.proxy import serve_proxy

    serve_proxy(args.storage or "", args.host, args.port, threads=args.threads)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print the names (and one-line help) of a registry."""
    from studies.catalog import registry_for

    if args.timm:
        if args.what != "models":
            raise UserError("--timm lists models: run_study.py list models --timm")
        from ablation.timm_models import list_timm_models

        print("\n".join(list_timm_models()))
        return 0
    reg = registry_for(args.what)
    width = max((len(n) for n in reg.names()), default=0)
    for name in reg.names():
        text = reg.help(name)
        if args.what == "activations":  # one line per name still: the options follow the help
            text = "; ".join(part for part in (text, _options_text(reg.entry(name))) if part)
        print(f"{name:<{width}}  {text}".rstrip())
    return 0


def _options_text(entry: Any) -> str:
    """``options: k=2, r=4, ...``: the keywords an activation entry accepts, with the defaults its factory declares,
    in the factory's order (a None default, decided inside, shows the bare name); ``options: any`` where it takes
    any keyword, nothing where it takes none."""
    import inspect

    if entry.options is None:
        return "options: any"
    try:
        params = inspect.signature(entry.obj).parameters
    except (TypeError, ValueError):  # no readable signature: names only
        params = {}
    names = [n for n in params if n in entry.options] + sorted(entry.options - set(params))
    empty = inspect.Parameter.empty
    defaults = {n: params[n].default for n in names if n in params and params[n].default is not empty}
    shown = [n if defaults.get(n) is None else f"{n}={_short(defaults[n])}" for n in names]
    return f"options: {', '.join(shown)}" if shown else ""


def _short(value: Any) -> str:
    """A default as the listing shows it: floats in 6 significant digits (``mu=4.35267e-09``), the rest as str."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_study(name: str) -> None:
    """Refuse an unknown built-in study name before loading torch, optuna's storages and MLflow (seconds).
    A study file is loaded once, by the runner: it is the user's code."""
    from studies.catalog import load_study
    from studies.spec import is_study_file

    if not is_study_file(name):
        load_study(name)


def cmd_run(args: argparse.Namespace) -> int:
    """Run or resume a study, then print its summary table."""
    _check_study(args.study)
    from studies.run.launch import run_study
    from studies.run.options import from_args
    from studies.store.storage import resolve_tracking_uri
    from studies.tracking.summary import summary_text, unfinished

    if args.launcher != "slurm" and (args.detach or args.slurm_config or _slurm_flags_given(args)):
        raise UserError("--detach, --slurm-config and --slurm-* flags need --launcher slurm")
    if args.launcher == "slurm":
        from studies.run.slurm import Submitted, run_slurm
        from studies.run.slurm_config import slurm_config

        result = run_slurm(args.study, from_args(args), slurm_config(args), workers=args.workers, detach=args.detach)
        if isinstance(result, Submitted):
            print(result.text())
            return 0
    elif args.workers != 1 or args.gpus:
        from studies.run.workers import parse_gpus, run_workers

        result = run_workers(args.study, from_args(args), workers=args.workers,
                             gpus=parse_gpus(args.gpus))
    else:
        result = run_study(args.study, from_args(args, max_trials=args.max_trials))
    print(summary_text(result, resolve_tracking_uri(args.tracking_uri)))
    print(f"Optuna storage {mask_url(result.storage)}")
    return 1 if unfinished(result.study)[1] else 0  # cells left failed; cells merely not run yet are fine


def _slurm_flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, k) is not None for k in vars(args) if k.startswith("slurm_"))


def cmd_worker(args: argparse.Namespace) -> int:
    """Join an existing study and run trials until none is left."""
    _check_study(args.study)
    from studies.run.launch import run_study
    from studies.run.options import from_args
    from studies.tracking.summary import summary_text

    print(summary_text(run_study(args.study, from_args(args), join=True)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print (and optionally write) the ablation table of a study."""
    from report import build_report

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    group_by = [a.strip() for a in args.group_by.split(",")] if args.group_by else None
    searched = _searched_study(args) if args.plots else None
    print(build_report(args.study, tracking_uri=args.tracking_uri, experiment=args.experiment, group_by=group_by,
                       baseline=args.baseline, metric=args.metric, formats=formats, out_dir=args.out,
                       plots=args.plots, optuna_study=searched, log_to_mlflow=not args.no_log, effect=args.effect,
                       activations=args.activations, fidelity=args.fidelity, against=args.against))
    return 0


def _searched_study(args: argparse.Namespace):
    """The Optuna study behind a search (hpo) study, for its importance plot; None for grids or if absent."""
    import optuna

    from studies.store.storage import open_storage, require_existing, resolve_storage, storage_file

    name = args.study_name or f"{args.study}-{args.preset}"
    url = resolve_storage(args.storage, study=name)  # the default file that holds it: optuna.db or optuna.journal
    if args.storage:
        require_existing(url)  # a storage named on purpose must be there; the default one may not be
    path = storage_file(url)
    if path is not None and not Path(path).exists():
        return None
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    except KeyError:  # no such study in this storage
        return None
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.params]
    return study if len(finished) >= 2 else None


def cmd_overhead(args: argparse.Namespace) -> int:
    """Print the params/FLOPs overhead table over the given values of each axis."""
    from report import format_table, overhead_table
    from report.overhead import terminal_frame
    from report.tables import check_formats

    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    rs = [_int("--r", v) for v in split(args.r)]
    table = overhead_table(split(args.model), split(args.generator), rs, split(args.placement),
                           input_size=args.input_size, activation=split(args.activation), latency=args.latency,
                           export=args.export)
    fmt = check_formats(args.format)[0]  # "txt" and "text" are the terminal too
    terminal = fmt == "terminal"
    print(format_table(terminal_frame(table) if terminal else table, fmt))
    print(table.attrs.get("convention", ""))
    if terminal and not table.empty:
        print("the baseline's counts, MACs and elementwise ops: --format markdown or csv")
    for line in table.attrs.get("skipped", []):
        print(f"skipped {line}")
    return 0


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{flag} takes integers, got {value!r}") from None


if __name__ == "__main__":
    sys.exit(main())
