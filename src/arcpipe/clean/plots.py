"""The two histograms a person checks the cleaning thresholds by, and the numbers under them.

    data = plot_data(store, eval_sets, robust_cut=0.25, passes=2)
    similarity_histogram(data.intra_cos, kept, min_cos, "intra_similarity.png")
    nearest_centre_histogram(data.nearest_identity, data.nearest_eval, max_cos, overlap_cos, "nearest_centre.png")

Both show the store before cleaning, under its own labels: each image's cosine to its identity's
robust centre (the intra rule's centre: the mean, re-averaged `passes` times without the images
below `robust_cut`), and each identity centre's cosine to the nearest other identity centre and to
the nearest evaluation-set identity. Drawn with matplotlib's Agg canvas (no display, no pyplot
state); the PNGs carry no software-version metadata, so the same numbers give the same bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .centres import CHUNK, centre_cosines, nearest, robust_centres
from .rules import EvalSet
from .store import FeatureStore

__all__ = ["PlotData", "plot_data", "similarity_histogram", "nearest_centre_histogram"]


@dataclass
class PlotData:
    intra_cos: np.ndarray                 # (N,) each image's cosine to its identity's robust centre
    nearest_identity: np.ndarray          # (C',) each identity's cosine to the nearest other identity
    nearest_eval: Optional[np.ndarray]    # (C',) to the nearest evaluation-set identity; None: no sets


def plot_data(store: FeatureStore, eval_sets: Sequence[EvalSet], robust_cut: float, passes: int,
              chunk: int = CHUNK) -> PlotData:
    centres, counts = robust_centres(store, robust_cut, passes, chunk=chunk)
    cos = centre_cosines(store, centres, chunk=chunk)
    live = centres[counts > 0]
    if len(live) > 1:
        _, near = nearest(live, live, k=1, exclude_same_index=True)
        near_id = near[:, 0]
    else:
        near_id = np.zeros(0, np.float32)
    near_eval = None
    if eval_sets:
        others = np.concatenate([e.centres for e in eval_sets])
        near_eval = nearest(live, others, k=1)[1][:, 0] if len(live) else np.zeros(0, np.float32)
    return PlotData(cos, near_id, near_eval)


def _bins(values: np.ndarray, *marks: Optional[float]) -> np.ndarray:
    finite = values[np.isfinite(values)]
    lo = min([float(finite.min()) if finite.size else 0.0] + [m for m in marks if m is not None])
    lo = max(-1.0, np.floor(lo * 20) / 20 - 0.05)
    return np.linspace(lo, 1.0, 81)


def _figure(ncols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4 * ncols, 4.2), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _mark(ax, value: Optional[float], name: str, colour: str) -> None:
    if value is None:
        ax.text(0.02, 0.95, f"{name}: rule disabled", transform=ax.transAxes, va="top", fontsize=9)
        return
    ax.axvline(value, color=colour, linestyle="--", linewidth=1.5, label=f"{name} = {value:g}")
    ax.legend(loc="best", fontsize=9)


def _save(fig, path: str | os.PathLike) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


def similarity_histogram(cos: np.ndarray, kept: np.ndarray, threshold: Optional[float],
                         path: str | os.PathLike) -> None:
    """Each image's cosine to its identity centre, stacked: kept by the cleaning / removed (by any
    rule); the intra threshold drawn (None: the rule is off)."""
    cos = np.asarray(cos, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    fig, (ax,) = _figure(1)
    bins = _bins(cos, threshold)
    ax.hist([cos[kept & np.isfinite(cos)], cos[~kept & np.isfinite(cos)]], bins=bins, stacked=True,
            color=["tab:blue", "tab:red"], label=[f"kept ({int(kept.sum())})", f"removed ({int((~kept).sum())})"])
    ax.set_xlabel("cosine to the identity's robust centre (before cleaning)")
    ax.set_ylabel("images")
    ax.set_title(f"{len(cos)} images: similarity to their identity")
    _mark(ax, threshold, "intra.min_cos", "black")
    _save(fig, path)


def nearest_centre_histogram(nearest_identity: np.ndarray, nearest_eval: Optional[np.ndarray],
                             inter: Optional[float], overlap: Optional[float], path: str | os.PathLike) -> None:
    """Each identity centre's cosine to its nearest other identity (the inter threshold drawn) and to
    the nearest evaluation-set identity (the overlap threshold drawn)."""
    fig, (left, right) = _figure(2)
    near = np.asarray(nearest_identity, dtype=np.float64)
    left.hist(near, bins=_bins(near, inter), color="tab:blue")
    left.set_xlabel("cosine to the nearest other identity centre")
    left.set_ylabel("identities")
    left.set_title(f"{len(near)} identities: nearest other identity")
    _mark(left, inter, "inter.max_cos", "black")
    if nearest_eval is None:
        right.text(0.5, 0.5, "no evaluation sets\n(clean.eval_features is empty)", ha="center", va="center",
                   transform=right.transAxes)
        right.set_axis_off()
    else:
        ev = np.asarray(nearest_eval, dtype=np.float64)
        right.hist(ev, bins=_bins(ev, overlap), color="tab:green")
        right.set_xlabel("cosine to the nearest evaluation-set identity centre")
        right.set_ylabel("identities")
        right.set_title(f"{len(ev)} identities: nearest evaluation identity")
        _mark(right, overlap, "overlap.max_cos", "black")
    _save(fig, path)
