"""How to run a study (``RunOptions``), what a run did (``StudyRun``), and the one converter between options and
a command line: ``from_args`` reads the CLI's parsed flags, ``to_argv`` writes the flags a worker process is started
with; a test parses ``to_argv``'s output with the CLI's own parser and gets the same options back."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import optuna

from studies.settings import NAMES, to_argv as settings_argv
from studies.store.outage import outage_limit
from studies.training.config import check_int


@dataclass
class RunOptions:
    """How to run a study: preset, setting overrides (None: unset), stores, device; checked by ``check``."""

    preset: str = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    study_name: str | None = None
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False
    threads: int | None = None
    progress: bool = True
    max_trials: int | None = None
    race: bool = False  # race the designs across seeds (studies.race): --seeds is then the most any design gets
    race_alpha: float = 0.05
    race_test: str = "friedman"
    race_futility: float = 0.2  # conditional power below which a race settles a contest (0: never; studies.race)
    outage_limit: float | str | None = None  # seconds a storage outage is ridden through (None: $ACON_OUTAGE_LIMIT or 5 min)

    def check(self) -> None:
        """Refuse a bad device (or CUDA where there is none), thread count or trial limit before any store is
        opened: each trial would otherwise fail on it, one after another, and leave a study of failed trials."""
        from studies.training.loop import resolve_device

        resolve_device(self.device)  # a known name, and CUDA there when asked for
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        if self.max_trials is not None:
            check_int("max_trials", self.max_trials, 0)
        outage_limit(self.outage_limit)  # also checks $ACON_OUTAGE_LIMIT

    def study_name_for(self, study: str) -> str:
        """The Optuna study's name: ``--study-name``, else ``STUDY-PRESET``."""
        return self.study_name or f"{study}-{self.preset}"


@dataclass
class StudyRun:
    """What a run did: the Optuna study, the parent MLflow run, and counts by trial state."""

    study: optuna.Study
    parent_run_id: str
    ran: int
    counts: dict[str, int]
    missing: int = 0  # grid cells with no complete or pruned trial (failed ones a rerun retries)
    storage: str = ""  # the Optuna storage URL it used


#: The options a launcher passes on to its workers as flags (``to_argv``), besides the study settings.
_FLAGS = (("--storage", "storage"), ("--tracking-uri", "tracking_uri"), ("--experiment", "experiment"),
          ("--study-name", "study_name"), ("--preset", "preset"), ("--device", "device"), ("--data-dir", "data_dir"),
          ("--threads", "threads"), ("--outage-limit", "outage_limit"))


def from_args(args: Any, **extra: Any) -> RunOptions:
    """The options of a parsed ``run`` or ``worker`` command line (``run_study.py``); ``extra`` sets the rest."""
    race = {k: getattr(args, k) for k in ("race", "race_alpha", "race_test", "race_futility") if hasattr(args, k)}
    return RunOptions(preset=args.preset, overrides={name: getattr(args, name) for name in NAMES},
                      storage=args.storage, tracking_uri=args.tracking_uri, experiment=args.experiment,
                      study_name=args.study_name, device=args.device, data_dir=args.data_dir, download=args.download,
                      threads=args.threads, progress=not args.no_progress, outage_limit=args.outage_limit,
                      **{**race, **extra})


def to_argv(options: RunOptions) -> list[str]:
    """The flags that give ``options`` again to ``run_study.py worker`` (a worker joins, never races or downloads:
    ``race``, ``download`` and ``max_trials`` are the launcher's; a worker shows no progress bar)."""
    argv = []
    for flag, name in _FLAGS:
        value = getattr(options, name)
        if value is not None:
            argv += [flag, str(value)]
    return argv + ["--no-progress", *settings_argv(options.overrides)]


def worker_command(study: str, options: RunOptions) -> list[str]:
    """The ``run_study.py worker`` command line that joins ``study`` with these options."""
    return [sys.executable, "-m", "run_study", "worker", study, *to_argv(options)]
