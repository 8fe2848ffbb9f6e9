"""Render tables as terminal text, Markdown, CSV, LaTeX or HTML, and write them to files.

``display_frame`` turns the numeric ablation statistics into readable columns
("mean ± std", "[lo, hi]", "+0.40"); CSV keeps the raw numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from acon.registry import Registry

FORMATS = Registry("report format", doc="render(frame) -> str")
SUFFIX = {"terminal": ".txt", "markdown": ".md", "csv": ".csv", "latex": ".tex", "html": ".html"}

FORMATS.register("terminal", lambda df: df.to_markdown(index=False, tablefmt="simple", disable_numparse=True),
                 help="aligned plain text for a terminal")
FORMATS.register("markdown", lambda df: df.to_markdown(index=False, tablefmt="github", disable_numparse=True),
                 help="GitHub-flavoured Markdown")
FORMATS.register("csv", lambda df: df.to_csv(index=False), help="comma-separated values")
FORMATS.register("latex", lambda df: _latex(df), help="a LaTeX tabular")
FORMATS.register("html", lambda df: df.to_html(index=False, border=0, na_rep=""), help="an HTML table")


def _latex(df: pd.DataFrame) -> str:
    """A LaTeX tabular; the two non-ASCII symbols become math so any LaTeX engine takes them."""
    text = df.to_latex(index=False, escape=True)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def format_table(df: pd.DataFrame, fmt: str) -> str:
    """Render ``df`` in format ``fmt`` (terminal, markdown, csv, latex or html); CSV keeps full precision."""
    render = FORMATS.get(fmt)
    return render(df if fmt == "csv" else _readable(df))


def _readable(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns as text with 3 decimals ("-" for NaN); other columns unchanged."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = [("-" if math.isnan(v) else f"{v:.3f}") for v in out[col]]
    return out


def check_formats(formats) -> tuple[str, ...]:
    """Validate a format name or a sequence of them; unknown names list the valid choices."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    for fmt in formats:
        FORMATS.get(fmt)
    return formats


def display_frame(table: pd.DataFrame, group_by: list[str], *, accuracy: bool, baseline_label: str) -> pd.DataFrame:
    """The readable ablation table: counts, metric (and error) mean ± std, CI, delta, p-values, verdict."""
    unit = " %" if accuracy else ""
    name = "acc" if accuracy else "metric"
    out = table[group_by].astype(str).copy()
    out["n"] = table["n"].astype(str)
    out["pruned/failed"] = [f"{p}/{f}" for p, f in zip(table["pruned"], table["failed"])]
    out[f"{name}{unit}"] = [_pm(m, s) for m, s in zip(table["mean"], table["std"])]
    if accuracy:
        out["err %"] = [_pm(100.0 - m, s) for m, s in zip(table["mean"], table["std"])]
    out["95% CI"] = [_interval(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    out[f"Δ vs {baseline_label}"] = [_signed(d) for d in table["delta"]]
    out["pairs"] = table["n_pairs"].astype(str)
    out["p (t)"] = [_p(p) for p in table["p_t"]]
    out["p (Holm)"] = [_p(p) for p in table["p_holm"]]
    out["p (W)"] = [_p(p) for p in table["p_wilcoxon"]]
    out["verdict"] = table["verdict"]
    out["best"] = ["*" if b else "" for b in table["best"]]
    return out


def _pm(mean: float, std: float) -> str:
    """``"76.40 ± 0.31"``; a single run has no std."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _interval(lo: float, hi: float) -> str:
    """``"[75.9, 76.9]"``, or "-" when it cannot be computed (n < 2)."""
    return "-" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.2f}, {hi:.2f}]"


def _signed(value: float) -> str:
    """``"+0.40"`` / ``"-1.20"`` / ``"-"``."""
    return "-" if math.isnan(value) else f"{value:+.2f}"


def _p(value: float) -> str:
    """A p-value with 3 decimals, "<0.001" below that, "-" if untested."""
    if math.isnan(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def write_tables(frames: dict[str, pd.DataFrame], formats, out_dir: Path, stem: str) -> list[Path]:
    """Write one file per format; ``frames`` maps a format to its frame (key "default" for the rest)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in check_formats(formats):
        path = out_dir / f"{stem}{SUFFIX[fmt]}"
        path.write_text(format_table(frames.get(fmt, frames["default"]), fmt), encoding="utf-8")
        paths.append(path)
    return paths
