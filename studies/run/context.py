"""The run context: everything one process's run of a study shares, built once (``studies.run.launch.open_run``)
and passed down to the queue, the race's rounds and every trial."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import optuna

from studies.run.build import build_baseline, complexity, load_data
from studies.run.options import RunOptions
from studies.settings import Settings
from studies.spec import Study
from studies.tracking.writer import Tracker

#: tqdm's layout without the rate and brackets: at 100 columns the bar keeps about 25 of them.
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {elapsed}<{remaining}{postfix}"


@dataclass(frozen=True)
class Resolved:
    """A study checked against its options, once per process (``studies.run.launch.resolve``): the definition with
    its preset's cells, the settings, the race plan (``--race``, else None) and the Optuna study's name."""

    spec: Study
    settings: Settings
    race: Any  # studies.race.procedure.RacePlan | None
    name: str


@dataclass
class RunContext:
    """One process's run of a study: what it runs (``resolved``), how (``options``), where (the Optuna ``study``,
    the MLflow ``tracker``, the storage ``url``), and what this process has seen so far."""

    resolved: Resolved
    options: RunOptions
    study: optuna.Study
    tracker: Tracker
    url: str = ""
    bar: Any = None
    overheads: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    race_tagged: set = field(default_factory=set)  # child runs this process tagged as dropped from the race
    idle: int = 0  # polls this worker waited with nothing to run (a race between rounds)
    failed: set = field(default_factory=set)  # cell keys that failed in this process (a rerun retries them)

    @property
    def spec(self) -> Study:
        return self.resolved.spec

    @property
    def settings(self) -> Settings:
        return self.resolved.settings

    @contextmanager
    def progress_bar(self, total: int) -> Iterator[Any]:
        """A tqdm bar over trials; the running trial shows in a short postfix (the bar stays visible)."""
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=self.study.study_name, unit="trial", disable=not self.options.progress,
                  dynamic_ncols=True, bar_format=BAR_FORMAT) as bar:
            self.bar = bar
            yield bar

    def overhead(self, label: str, model, sites: list, settings: dict[str, Any], data) -> dict[str, float]:
        """Params/FLOPs against the ReLU model, counted once per design (seeds share it)."""
        if label not in self.overheads:
            self.overheads[label] = complexity(model, build_baseline(settings, data), data, len(sites))
        return self.overheads[label]

    def data(self):
        """The dataset splits, loaded once per process (the split seed is fixed, shared by all trials)."""
        return load_data(self.settings["dataset"], self.options.data_dir, self.options.download,
                         self.settings.get("limit"))
