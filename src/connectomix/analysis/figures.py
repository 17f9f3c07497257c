"""Analysis figures (matplotlib, Agg): every figure is saved as PNG and SVG, with axis labels, units and n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path_png: str | Path) -> None:
    """Save ``fig`` as ``path_png`` and the same name with ``.svg``; close it."""
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)
    fig.savefig(path_png.with_suffix(".svg"))
    _plt().close(fig)


def not_computed(path: str | Path, reason: str):
    """A figure that says why an analysis was not computed (keeps declared outputs honest)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"not computed: {reason}", ha="center", va="center", wrap=True)
    save(fig, path)


def like_to_like(binned: pd.DataFrame, summary: dict, x: str, path: str | Path, gt: pd.DataFrame | None = None):
    """Connection probability and synapses per pair vs ``x`` (signal_corr | ori_diff): bootstrap CI, shuffle band."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    label = {"signal_corr": "signal correlation", "ori_diff": "preferred-orientation difference (deg)"}[x]
    for ax, measure, ylabel in zip(axes, ("connection", "synapses"),
                                   ("connection probability (distance-adjusted)", "synapses per pair (distance-adj.)")):
        t = binned[(binned["x"] == x) & (binned["measure"] == measure)]
        centre = (t["bin_low"] + t["bin_high"]) / 2
        ax.fill_between(centre, t["null_low"], t["null_high"], color="0.85", label="shuffle null 95 %")
        # Percentile intervals of an adjusted mean need not contain the point estimate: clip the bars at 0.
        yerr = np.clip([t["mean"] - t["ci_low"], t["ci_high"] - t["mean"]], 0, None)
        ax.errorbar(centre, t["mean"], yerr=np.nan_to_num(yerr), fmt="o-",
                    color="C0", capsize=3, label="reconstruction (95 % bootstrap CI)")
        s = summary[f"{measure}_vs_{x}"]
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        relative = (f"relative {s['relative_slope']:.3g} [{s['relative_ci_low']:.3g}, {s['relative_ci_high']:.3g}]"
                    if np.isfinite(s["relative_slope"]) else "relative - (no connection)")
        ax.set_title(f"slope {s['slope']:.3g} [{s['ci_low']:.3g}, {s['ci_high']:.3g}], {relative}\n"
                     f"n = {s['n_neurons']} neurons, {s['n_pairs']} pairs ({s['n_connected']} connected)",
                     fontsize=9)
        ax.legend(fontsize=7)
    save(fig, path)


def connection_vs_distance(table: pd.DataFrame, path: str | Path) -> None:
    """Connection probability vs soma distance (µm) with Wilson CIs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    centre = (table["bin_low_um"] + table["bin_high_um"]) / 2
    p = table["p_connection"]
    yerr = np.nan_to_num(np.clip([p - table["ci_low"], table["ci_high"] - p], 0, None))
    ax.errorbar(centre, p, yerr=yerr, fmt="o-", capsize=3)
    ax.set_xlabel("soma distance (µm)")
    ax.set_ylabel("connection probability")
    ax.set_title(f"n = {int(table['n_pairs'].sum())} ordered pairs", fontsize=9)
    save(fig, path)


def celltype_matrix(table: pd.DataFrame, path: str | Path) -> None:
    """Heatmap of connection probability for pre type (rows) x post type (columns), annotated with n."""
    plt = _plt()
    types = sorted(set(table["pre_type"]) | set(table["post_type"]))
    mat = np.full((len(types), len(types)), np.nan)
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    for _, row in table.iterrows():
        i, j = types.index(row["pre_type"]), types.index(row["post_type"])
        mat[i, j] = row["p_connection"]
    im = ax.imshow(mat, cmap="viridis", vmin=0)
    for _, row in table.iterrows():
        i, j = types.index(row["pre_type"]), types.index(row["post_type"])
        ax.text(j, i, f"{row['p_connection']:.3f}\n{row['n_connected']}/{row['n_pairs']}", ha="center",
                va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(types)), types)
    ax.set_yticks(range(len(types)), types)
    ax.set_xlabel("postsynaptic type")
    ax.set_ylabel("presynaptic type")
    fig.colorbar(im, ax=ax, label="connection probability")
    save(fig, path)


def tuning_summary(tuning: pd.DataFrame, path: str | Path) -> None:
    """Histograms of preferred orientation, OSI and reliability of matched neurons."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    n = len(tuning)
    axes[0].hist(tuning["pref_orientation_deg"].dropna(), bins=np.arange(0, 181, 15))
    axes[0].set_xlabel("preferred orientation (deg)")
    axes[1].hist(tuning["osi"].dropna(), bins=np.linspace(0, 1, 21))
    axes[1].set_xlabel("orientation selectivity index")
    axes[2].hist(tuning["reliability"].dropna(), bins=np.linspace(-1, 1, 21))
    axes[2].set_xlabel("split-half reliability (r)")
    for ax in axes:
        ax.set_ylabel("neurons")
        ax.set_title(f"n = {n}", fontsize=9)
    save(fig, path)


def coregistration(rois: pd.DataFrame, mapped: np.ndarray, matches: pd.DataFrame, ids: np.ndarray,
                   path: str | Path) -> None:
    """ROIs and EM somata mapped into the imaging frame (x-y and x-z, µm), matched pairs joined."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    q = rois[["x_um", "y_um", "z_um"]].to_numpy(float)
    index = {int(v): i for i, v in enumerate(ids)}
    matched = matches["neuron_id"].to_numpy(np.int64) > 0
    for ax, (a, b, name) in zip(axes, ((0, 1, "y"), (0, 2, "z"))):
        ax.scatter(mapped[:, a], mapped[:, b], s=14, facecolors="none", edgecolors="C1", label="EM somata (mapped)")
        ax.scatter(q[:, a], q[:, b], s=6, c=np.where(matched, "C0", "C3"), label="ROIs (red: unmatched)")
        for (r, nid) in zip(np.flatnonzero(matched), matches["neuron_id"].to_numpy(np.int64)[matched]):
            s = mapped[index[int(nid)]]
            ax.plot([q[r, a], s[a]], [q[r, b], s[b]], "k-", lw=0.5)
        ax.set_xlabel("x (µm, imaging frame)")
        ax.set_ylabel(f"{name} (µm, imaging frame)")
        ax.set_title(f"{int(matched.sum())}/{len(q)} ROIs matched to {len(mapped)} somata", fontsize=9)
        ax.legend(fontsize=7)
    save(fig, path)
