"""Render tables as terminal text, Markdown, CSV, LaTeX or HTML, and write them to files.

``display_frame`` turns the numeric ablation statistics into readable columns
("mean ± std", "[lo, hi]", "+0.40"); CSV keeps the raw numbers.
"""
from __future__ import annotations

import base64
import html
import math
import textwrap
from pathlib import Path

import pandas as pd

from acon.registry import Registry

FORMATS = Registry("report format", doc="render(frame) -> str")
SUFFIX = {"terminal": ".txt", "markdown": ".md", "csv": ".csv", "latex": ".tex", "html": ".html"}
ALIASES = {"md": "markdown", "txt": "terminal", "text": "terminal", "tex": "latex", "htm": "html"}
WIDTH = 100  # terminal tables and footnotes fit this many columns

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
    """Validate a format name or a sequence of them (``md`` is ``markdown``); unknown names list the valid choices."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    formats = tuple(ALIASES.get(f, f) for f in formats)
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


def group_labels(table: pd.DataFrame, group_by: list[str], *, sep: str = "·", every_axis: bool = False) -> list[str]:
    """One readable label per row: the values of its group axes that apply, ``meta_acon·channel·r8``.

    Axes with one value on every row are left out unless ``every_axis`` (then, with ``sep="/"``,
    the label is the run's ``acon.variant``).
    """
    def part(axis: str, value) -> str:
        return f"r{value}" if axis == "r" else str(value)

    varying = group_by if every_axis else [a for a in group_by if table[a].nunique() > 1] or group_by
    return [sep.join(part(a, v) for a, v in zip(varying, values) if str(v) != "-") or "-"
            for values in table[varying].itertuples(index=False)]


def short_variant(variant: str) -> str:
    """A run's variant tag as narrow columns show it: ``meta_acon/channel/r8/all`` -> ``meta_acon·channel·r8``."""
    parts = str(variant).split("/")
    return "·".join(parts[:-1] if len(parts) > 1 and parts[-1] == "all" else parts)


def compact_frame(table: pd.DataFrame, group_by: list[str], *, accuracy: bool) -> pd.DataFrame:
    """The terminal table (fits 100 columns): label, n, mean ± std (* best), CI, Δ, Holm p, verdict."""
    name = "acc %" if accuracy else "metric"
    out = pd.DataFrame({"variant" if len(group_by) > 1 else group_by[0]: group_labels(table, group_by)})
    out["n"] = table["n"].astype(str).to_numpy()
    if (table["pruned"] + table["failed"]).any():
        out["dropped"] = (table["pruned"] + table["failed"]).astype(str).to_numpy()
    out[name] = [_pm(m, s) + (" *" if b else "") for m, s, b in zip(table["mean"], table["std"], table["best"])]
    out["95% CI"] = [_interval(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    out["Δ"] = [_signed(d) for d in table["delta"]]
    out["p (Holm)"] = [_p(p) for p in table["p_holm"]]
    out["verdict"] = table["verdict"].to_numpy()
    return out


def wrap(text: str, width: int = WIDTH) -> str:
    """Paragraphs wrapped to ``width`` columns (a blank line between paragraphs is kept)."""
    return "\n".join(textwrap.fill(line, width) if line else "" for line in text.splitlines())


def html_page(title: str, intro: list[str], settings: dict, table: pd.DataFrame, footnote: str,
              images: list[Path], more: list[tuple[str, pd.DataFrame, str]] = ()) -> str:
    """A complete UTF-8 HTML page: title, study lines, the table, its footnote, ``more`` (heading, table, note)
    sections, PNG plots inline, settings."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in sorted(settings.items()))
    plots = "".join(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
                    f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(p.stem)}</figcaption></figure>'
                    for p in images if p.suffix == ".png")
    notes = "".join(f"<p>{esc(line)}</p>" for line in footnote.splitlines() if line.strip())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"
            + "".join(f"<p>{esc(line)}</p>" for line in intro if line.strip())
            + f'<h2>Ablation table</h2><div class="wide">{format_table(table, "html")}</div><div class="note">{notes}</div>'
            + "".join(f'<h2>{esc(heading)}</h2><div class="wide">{format_table(frame, "html") if not frame.empty else ""}'
                      f'</div><div class="note"><p>{esc(note)}</p></div>' for heading, frame, note in more)
            + (f"<h2>Plots</h2>{plots}" if plots else "")
            + f"<h2>Settings</h2><table class=\"settings\">{rows}</table></body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
        "th{background:#f4f4f4}.wide{overflow-x:auto}"
        ".settings td,.settings th{text-align:left}.note{color:#444;font-size:.9em;max-width:60em}"
        "figure{display:inline-block;margin:.5em}img{max-width:36em}")


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
