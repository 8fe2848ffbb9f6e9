"""Rank agreement of designs: Kendall's tau-b and a seeded, paired percentile bootstrap of it.

Shared by ``report.fidelity`` (epoch k against the final epoch) and ``report.against`` (one study against
another). The bootstrap resamples seeds, one draw of seed numbers for every design (paired), when every
design has at least 2 seeds in common; otherwise (a search, one seed per design) it resamples designs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from report.inference import BOOTSTRAP_SEED, LEVEL, MIN_PAIRS_BOOTSTRAP

DRAWS = 2000
MIN_SHARED_SEEDS = 2
DIGITS = 12  # taus are rounded so that scipy's and the vectorised one agree: a draw equal to the sample gives its tau
MEAN_DIGITS = 9  # means too: two designs' means that differ only by float rounding (0.15 and 0.15000000000000002) tie


def kendall(x, y) -> float:
    """Kendall's tau-b of two score vectors (scipy; ties handled, NaN pairs left out); NaN when undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tau = stats.kendalltau(np.asarray(x, float), np.asarray(y, float), nan_policy="omit").statistic
    return round(float(tau), DIGITS)


def tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b along the last axis (the designs) of two broadcastable arrays, NaN where a row has a NaN
    or no untied pair: ``scipy.stats.kendalltau`` row by row (a test pins it), vectorised, because scipy takes
    0.5 ms a call and a bootstrap of 30 epochs asks for 60,000."""
    i, j = np.triu_indices(np.shape(x)[-1], 1)
    dx, dy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.round((dx * dy).sum(-1) / np.sqrt((dx != 0).sum(-1) * (dy != 0).sum(-1)), DIGITS)


@dataclass
class Resampling:
    """What a bootstrap resamples: ``seeds`` (paired: one draw of seed numbers for every design) or ``designs``;
    ``seeds`` lists every seed of the data either way (the cube's second axis)."""

    unit: str
    count: int
    seeds: list[int]

    def describe(self, draws: int = DRAWS) -> str:
        """``95% percentile bootstrap over 3 seeds (paired: ...), 2000 draws; 3 seeds: a rough interval``."""
        few = f"; {self.count} {self.unit}: a rough interval" if self.count < MIN_PAIRS_BOOTSTRAP else ""
        how = ("paired: one draw of seed numbers for every design" if self.unit == "seeds" else
               f"fewer than {MIN_SHARED_SEEDS} seeds are shared by every design, so designs are resampled")
        return f"{LEVEL:.0%} percentile bootstrap over {self.count} {self.unit} ({how}), {draws} draws{few}"


def resampling(values: pd.DataFrame) -> Resampling:
    """Seeds when every design of ``values`` (indexed by design and seed, a column per score) has at least 2 seeds
    with every score present, else designs; ``seeds`` lists every seed of ``values`` either way."""
    full = values.dropna()
    seeds_of = [set(g.index.get_level_values(1)) for _, g in full.groupby(level=0)]
    union = sorted(set(values.index.get_level_values(1)))
    if seeds_of and len(set.intersection(*seeds_of)) >= MIN_SHARED_SEEDS:
        return Resampling("seeds", len(union), union)
    return Resampling("designs", len(set(values.index.get_level_values(0))), union)


def cube(values: pd.Series, designs: list, seeds: list, columns: list) -> np.ndarray:
    """(designs, seeds, columns) array of ``values`` indexed by (design, seed, column); NaN where one is missing."""
    full = pd.MultiIndex.from_product([designs, seeds, columns])
    return values.reindex(full).to_numpy(float).reshape(len(designs), len(seeds), len(columns))


def point_means(values: np.ndarray) -> np.ndarray:
    """Each design's mean over the seeds it has: (designs, seeds, ...) -> (designs, ...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a design with no value in a column
        return np.round(np.nanmean(values, axis=1), MEAN_DIGITS)


def bootstrap_means(values: np.ndarray, how: Resampling, count: int = DRAWS,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Each draw's means per design, (draws, designs, ...): seeds resampled (one draw for every design; a design's
    missing seeds left out, none drawn gives NaN) or designs resampled (a design drawn twice counts twice)."""
    if how.unit == "seeds":
        idx = draws(values.shape[1], count, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.round(np.nanmean(values[:, idx], axis=2), MEAN_DIGITS).swapaxes(0, 1)
    return point_means(values)[draws(values.shape[0], count, seed)]


def draws(n: int, count: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``count`` resamples of ``n`` indices with replacement, shape (count, n), from a generator seeded with
    ``seed``: the same runs give the same interval."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def interval(taus: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis (the draws) of the finite values; NaN where none is."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column whose every draw ties
        return np.nanpercentile(taus, tail, axis=0), np.nanpercentile(taus, 100 - tail, axis=0)
