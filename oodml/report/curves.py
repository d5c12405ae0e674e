"""Degradation curves: metric (or few-shot gain) vs. FID of each split level, one panel per k (docs/formats.md).

Figures are built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display, no global backend
change). Families are told apart by colour, methods by marker; the legend sits outside the panels. The lines carry
the method name as their label, so tests can read the plotted data back from the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from oodml.io import atomic_write

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
_RC: Any = {"svg.hashsalt": "oodml", "svg.fonttype": "path", "font.size": 9, "axes.titlesize": 10}


@dataclass(frozen=True)
class Series:
    """One method's line in one panel: y at each level's FID, with an optional band (NaN = no band)."""

    method: str
    family: str
    fid: np.ndarray
    level: np.ndarray
    y: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def metric_series(stats: pd.DataFrame, levels: pd.DataFrame, *, k: int, metric: str) -> list[Series]:
    """Per method: mean over seeds at each level with its 95% bootstrap interval, for one k and metric (from
    `level_stats`; no band where the level has no interval)."""
    sub = stats[(stats["k_shot"] == k) & (stats["metric"] == metric)]
    sub = sub.merge(levels[["level", "fid"]].rename(columns={"level": "split_level"}), on="split_level")
    return [Series(str(m), str(g["method_family"].iloc[0]), g["fid"].to_numpy(float), g["split_level"].to_numpy(),
                   g["mean"].to_numpy(float), g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float))
            for m, g in sub.sort_values(["method", "fid"]).groupby("method", sort=True)]


def gain_series(gain: pd.DataFrame, *, k: int) -> list[Series]:
    """Per adapted method: its few-shot gain over the unadapted model at each level, with the 95% bootstrap
    interval as its band, for one k (from `few_shot_gain`)."""
    sub = gain[gain["k_shot"] == k].sort_values(["method", "fid"])
    return [Series(str(m), str(g["method_family"].iloc[0]), g["fid"].to_numpy(float), g["split_level"].to_numpy(),
                   g["gain"].to_numpy(float), g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float))
            for m, g in sub.groupby("method", sort=True)]


def method_styles(families: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """method -> (colour, marker): one tab10/tab20 colour per family (sorted), markers cycle within a family."""
    fams = sorted(set(families.values()))
    palette = "tab10" if len(fams) <= 10 else "tab20"
    from matplotlib import colormaps

    cmap = colormaps[palette]
    colour = {f: _hex(cmap(i % cmap.N)) for i, f in enumerate(fams)}
    out: dict[str, tuple[str, str]] = {}
    for f in fams:
        for j, m in enumerate(sorted(m for m, fam in families.items() if fam == f)):
            out[m] = (colour[f], _MARKERS[j % len(_MARKERS)])
    return out


def _hex(rgba: Sequence[float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def plot_panels(panels: Mapping[str, list[Series]], levels: pd.DataFrame, *, ylabel: str, title: str,
                unit_range: bool = True, zero_line: bool = False) -> Figure:
    """One subplot per panel (e.g. per k): a line with markers and a band per method, x = FID, top ticks = levels.

    Args:
        panels: panel title -> its lines.
        levels: `levels_table` (level numbers and FIDs for the top axis).
        ylabel: the y-axis label.
        title: the figure title.
        unit_range: clip the y limits to [0, 1] (metrics); False for differences.
        zero_line: draw y = 0 (for gains).

    Returns:
        The figure (Agg canvas attached); each data line is a `Line2D` labelled with its method.
    """
    families = {s.method: s.family for lines in panels.values() for s in lines}
    styles = method_styles(families)
    n = max(len(panels), 1)
    ncols = 2 if n == 4 else min(n, 3)
    nrows = -(-n // ncols)
    legend_w = 2.6 if families else 0.0
    fig = Figure(figsize=(4.0 * ncols + legend_w, 3.4 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    ys = np.concatenate([np.zeros(0)] + [np.concatenate([s.y, s.lo, s.hi]) for lines in panels.values() for s in lines])
    ys = ys[np.isfinite(ys)]
    if unit_range:  # a band may pass 0 or 1; the axis stops just outside so that points at 0 or 1 stay visible
        ys = np.clip(ys, 0.0, 1.0)
    band_alpha = 0.15 if len(families) <= 6 else 0.06  # many overlapping bands would hide the lines
    for ax, (name, lines) in zip(axes, panels.items()):
        for s in lines:
            colour, marker = styles[s.method]
            if s.lo.size and np.isfinite(s.lo).any():
                ax.fill_between(s.fid, s.lo, s.hi, color=colour, alpha=band_alpha, linewidth=0)
            ax.plot(s.fid, s.y, color=colour, marker=marker, markersize=5, linewidth=1.4, label=s.method,
                    linestyle=_linestyle(s.method))
        _decorate(ax, name, levels, ylabel)
        if zero_line:
            ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=0)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if ys.size:
        lo, hi = float(ys.min()), float(ys.max())
        pad = max(0.05 * (hi - lo), 0.02)
        lo, hi = lo - pad, hi + pad
        if unit_range:
            lo, hi = max(lo, -0.02), min(hi, 1.02)
        axes[0].set_ylim(lo, hi)
    if not panels:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
    handles = [Line2D([], [], color=styles[m][0], marker=styles[m][1], linestyle=_linestyle(m),
                      label=f"{m} ({families[m]})")
               for m in sorted(families, key=lambda m: (families[m], m))]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", title="method (family)", frameon=False)
    fig.suptitle(title)
    return fig


def _linestyle(method: str) -> Literal["-", "--"]:
    """Embedding variants (`method[variant]`) are dashed; the plain embedding is solid."""
    return "--" if method.endswith("]") else "-"


def _decorate(ax: object, name: str, levels: pd.DataFrame, ylabel: str) -> None:
    from matplotlib.axes import Axes

    assert isinstance(ax, Axes)
    ax.set_title(name)
    ax.set_xlabel("FID (train vs. test class means)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    lv = levels.dropna(subset=["fid"])
    if len(lv):
        top = ax.secondary_xaxis("top")
        top.set_xticks(lv["fid"].to_numpy(float), labels=[f"L{int(v)}" for v in lv["level"]], fontsize=7)
        top.set_xlabel("split level", fontsize=8)


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.svg` reproducibly (no dates in the files); returns both paths."""
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    with rc_context(_RC), atomic_write(paths[0], "wb") as png, atomic_write(paths[1], "wb") as svg:  # no links
        fig.savefig(png, format="png", dpi=120, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return paths


def build_figure(panels: Mapping[str, list[Series]], levels: pd.DataFrame, *, ylabel: str, title: str,
                 unit_range: bool = True, zero_line: bool = False) -> Figure:
    """`plot_panels` under the report's fixed style settings (font sizes, SVG hash salt)."""
    with rc_context(_RC):
        return plot_panels(panels, levels, ylabel=ylabel, title=title, unit_range=unit_range, zero_line=zero_line)
