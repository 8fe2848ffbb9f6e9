"""What a SLURM job array asks for (``SlurmConfig``): flags, a TOML file that keeps them, and their checks.

Each field is one ``--slurm-*`` flag of ``run`` and one key of the ``[slurm]`` table of the file given
by ``--slurm-config``; a flag given on the command line wins over the file, the file over the default.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from studies.errors import UserError


@dataclass(frozen=True)
class SlurmConfig:
    """One task of the array: a worker with these resources (``sbatch`` options through submitit)."""

    partition: str | None = field(default=None, metadata={"help": "SLURM partition (default: the cluster's)"})
    time: int = field(default=60, metadata={"help": "minutes per task (default 60); submitit requeues a task "
                                                    "that reaches it, and the requeued task goes on with the queue",
                                            "min": 1, "metavar": "MIN"})
    gpus: int = field(default=0, metadata={"help": "GPUs per task (default 0)", "min": 0, "metavar": "N"})
    cpus: int = field(default=2, metadata={"help": "CPU cores per task (default 2; also the worker's torch threads)",
                                           "min": 1, "metavar": "N"})
    mem: float | None = field(default=None, metadata={"help": "memory per task in GB (default: the cluster's)",
                                                      "min": 0.1, "metavar": "GB"})
    account: str | None = field(default=None, metadata={"help": "SLURM account to charge"})
    qos: str | None = field(default=None, metadata={"help": "SLURM quality of service"})
    setup: tuple[str, ...] = field(default=(), metadata={
        "help": "a shell line run before each worker, e.g. 'module load cuda' (repeat the flag for several)"})
    proxy: int | None = field(default=None, metadata={
        "help": "start Optuna's gRPC storage proxy as a SLURM job of its own, listening on this port, in front of "
                "--storage (a database server): the workers connect through it, one connection pool for all "
                "(see storage-proxy); it stops when the array is over", "min": 1, "metavar": "PORT"})
    folder: str | None = field(default=None, metadata={
        "help": "where the tasks' logs and submitit's files go (default slurm/STUDY-NAME); must be on a "
                "folder the nodes share"})

    def check(self) -> None:
        """Refuse a number out of its range, naming the flag and the range."""
        for f in fields(self):
            low, value = f.metadata.get("min"), getattr(self, f.name)
            if low is None or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise UserError(f"--slurm-{f.name} must be a number >= {low:g}, got {value!r}")
            if f.type.startswith("int") and not isinstance(value, int):
                raise UserError(f"--slurm-{f.name} must be a whole number >= {low:g}, got {value!r}")


FIELDS = tuple(f.name for f in fields(SlurmConfig))


def add_slurm_flags(parser: argparse.ArgumentParser) -> None:
    """``--launcher``, ``--detach``, ``--slurm-config`` and one ``--slurm-NAME`` flag per ``SlurmConfig`` field."""
    group = parser.add_argument_group("SLURM (with --launcher slurm; submitted through submitit)")
    group.add_argument("--launcher", default="local", choices=("local", "slurm"),
                       help="local: worker processes on this machine (default); slurm: --workers tasks of one "
                            "SLURM job array, sharing --storage (PostgreSQL, or a journal file on a shared folder)")
    group.add_argument("--detach", action="store_true",
                       help="submit the job array and return (prints how to watch it); the last worker closes "
                            "the study's parent run")
    group.add_argument("--slurm-config", metavar="FILE",
                       help="a TOML file whose [slurm] table keeps these settings (keys as below, without "
                            "'--slurm-'); a flag given here wins")
    for f in fields(SlurmConfig):
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "default": None}
        if f.name == "setup":
            kwargs.update(action="append", metavar="LINE")
        elif f.type in ("int", "int | None", "float | None"):
            kwargs.update(type=float if f.type == "float | None" else int, metavar=f.metadata.get("metavar"))
        group.add_argument(f"--slurm-{f.name}", **kwargs)


def slurm_config(args: argparse.Namespace) -> SlurmConfig:
    """The ``SlurmConfig`` of a parsed ``run`` command line: defaults, then the file, then the flags; checked."""
    values = read_config_file(args.slurm_config) if getattr(args, "slurm_config", None) else {}
    for name in FIELDS:
        flag = getattr(args, f"slurm_{name}", None)
        if flag is not None:
            values[name] = flag
    if "setup" in values:
        values["setup"] = tuple(values["setup"])
    config = replace(SlurmConfig(), **values)
    config.check()
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The ``[slurm]`` table of a TOML file, its keys checked against ``SlurmConfig``'s fields."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"--slurm-config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--slurm-config {path}: not valid TOML ({exc})") from None
    table = data.get("slurm")
    if not isinstance(table, dict):
        raise UserError(f"--slurm-config {path}: no [slurm] table (keys: {', '.join(FIELDS)})")
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        raise UserError(f"--slurm-config {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    if "setup" in table and (not isinstance(table["setup"], list)
                             or not all(isinstance(line, str) for line in table["setup"])):
        raise UserError(f"--slurm-config {path}: setup must be a list of shell lines (strings)")
    return dict(table)
