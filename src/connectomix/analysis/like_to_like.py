"""Like-to-like connectivity: does connection probability (and synapse count) grow with functional similarity?

Pairs are ordered (pre, post) pairs of distinct functionally characterised neurons. For each pair: signal correlation
of the two ROIs' stimulus-response curves, preferred-orientation difference (0-90 deg), soma distance (µm), whether
the pre neuron synapses onto the post neuron (>= ``min_synapses``) and the synapse count.

Distance control: pairs are put in soma-distance bins (quantiles), and the slope is that of a linear probability
model with one intercept per distance bin: ``beta = sum_b sum (x - xbar_b)(y - ybar_b) / sum_b sum (x - xbar_b)^2``.
The relative slope divides it by the mean of ``y`` over the same pairs (the fractional change in connection
probability per unit of ``x``): a reconstruction that misses a random fraction of the connections lowers the slope
by that fraction but leaves the relative slope as it was, so it is what an incomplete connectome can be checked on.
Confidence intervals: bootstrap over *neurons* (resample neurons with replacement, keep every pair among them;
pairs of one neuron are not independent). Shuffle null: permute the functional properties across neurons (rows and
columns together), keeping connectivity and distances; its slopes should centre on 0 (flat).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from connectomix.analysis.tuning import orientation_difference, signal_correlation


def adjacency(ids: np.ndarray, edges: pd.DataFrame, min_synapses: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(connected (n, n) float 0/1, n_synapses (n, n))`` for neurons ``ids``, from an edge table (pre, post,
    n_synapses); row = pre, column = post."""
    ids = np.asarray(ids)
    index = {int(v): i for i, v in enumerate(ids)}
    counts = np.zeros((len(ids), len(ids)))
    if len(edges):
        pre = edges["pre"].to_numpy(np.int64)
        post = edges["post"].to_numpy(np.int64)
        n = edges["n_synapses"].to_numpy(float) if "n_synapses" in edges else np.ones(len(edges))
        for a, b, k in zip(pre, post, n):
            i, j = index.get(int(a)), index.get(int(b))
            if i is not None and j is not None and i != j:
                counts[i, j] += k
    return (counts >= min_synapses).astype(float), counts


def distance_bins(dist: np.ndarray, mask: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile bins of the masked distances: ``(bin index matrix, edges)``."""
    edges = np.unique(np.quantile(dist[mask], np.linspace(0, 1, n_bins + 1))) if mask.any() else np.array([0, 1.0])
    idx = np.clip(np.searchsorted(edges, dist, side="right") - 1, 0, max(len(edges) - 2, 0))
    return idx, edges


def controlled_slope(x: np.ndarray, y: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> float:
    """Slope of ``y`` on ``x`` with a separate intercept per stratum ``b`` (1-D arrays; ``w`` pair weights)."""
    w = np.ones_like(x, dtype=float) if w is None else w
    nb = int(b.max()) + 1 if len(b) else 1
    sw = np.bincount(b, w, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.bincount(b, w * x, nb) / sw
        my = np.bincount(b, w * y, nb) / sw
    xc, yc = x - mx[b], y - my[b]
    den = (w * xc * xc).sum()
    return float((w * xc * yc).sum() / den) if den > 0 else float("nan")


def adjusted_binned(x, y, b, x_edges, w=None) -> np.ndarray:
    """Mean of ``y`` per ``x`` bin after removing the distance-stratum means (adding back the overall mean)."""
    w = np.ones_like(x, dtype=float) if w is None else w
    nb = int(b.max()) + 1 if len(b) else 1
    with np.errstate(invalid="ignore", divide="ignore"):
        my = np.bincount(b, w * y, nb) / np.bincount(b, w, nb)
        adj = y - my[b] + (w * y).sum() / w.sum()
        xi = np.clip(np.searchsorted(x_edges, x, side="right") - 1, 0, len(x_edges) - 2)
        k = len(x_edges) - 1
        return np.bincount(xi, w * adj, k) / np.bincount(xi, w, k)


def _pairs_of(sample: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns (into the original matrices) and multiplicities of the pairs among resampled neurons."""
    uniq, counts = np.unique(sample, return_counts=True)
    rows, cols = np.meshgrid(uniq, uniq, indexing="ij")
    w = np.outer(counts, counts).astype(float)
    off = ids[rows] != ids[cols]
    return rows[off], cols[off], w[off]


def _relative(slope: float, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """``slope`` over the (weighted) mean of ``y``; NaN where that mean is 0."""
    mean = float(np.average(y, weights=w)) if len(y) else 0.0
    return slope / mean if mean > 0 else float("nan")


def _percentile(values, q: float) -> float:
    """``q``-th percentile of the finite ``values``; NaN when there are none (e.g. no connection at all)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if len(values) else float("nan")


def analyse(x: np.ndarray, y: np.ndarray, dist_bin: np.ndarray, ids: np.ndarray, x_edges, n_boot: int = 1000,
            n_shuffle: int = 1000, seed: int = 0) -> dict:
    """Distance-controlled slope of ``y`` (n, n) on ``x`` (n, n) with a neuron bootstrap CI and a shuffle null.

    Returns ``slope``, ``ci_low``, ``ci_high`` (95 %), ``relative_slope`` (``slope`` / the mean of ``y``) with
    ``relative_ci_low`` and ``relative_ci_high``, ``null_mean``, ``null_sd``, ``null_ci_low``/``high``,
    ``p_value`` (two-sided, vs the shuffle null), ``null_flat`` (the null mean is within 3 standard errors of 0),
    ``n_neurons``, ``n_pairs``, ``n_connected`` (pairs with ``y`` > 0: what the slope's power rests on) and
    ``binned``: a table per ``x`` bin (``n``, distance-adjusted ``mean`` with bootstrap ``ci_low``/``ci_high`` and
    the null's 2.5-97.5 % band).
    """
    rng = np.random.default_rng(seed)
    n = len(ids)
    x_edges = np.asarray(x_edges, float)
    off = ~np.eye(n, dtype=bool)
    valid = off & np.isfinite(x)
    r, c = np.nonzero(valid)
    slope = controlled_slope(x[r, c], y[r, c], dist_bin[r, c])
    relative = _relative(slope, y[r, c])
    curve = adjusted_binned(x[r, c], y[r, c], dist_bin[r, c], x_edges)
    xi = np.clip(np.searchsorted(x_edges, x[r, c], side="right") - 1, 0, len(x_edges) - 2)
    counts = np.bincount(xi, minlength=len(x_edges) - 1)

    boot, boot_relative, boot_curves = [], [], []
    for _ in range(n_boot):
        rr, cc, w = _pairs_of(rng.integers(0, n, n), ids)
        ok = np.isfinite(x[rr, cc])
        rr, cc, w = rr[ok], cc[ok], w[ok]
        boot.append(controlled_slope(x[rr, cc], y[rr, cc], dist_bin[rr, cc], w))
        boot_relative.append(_relative(boot[-1], y[rr, cc], w))
        boot_curves.append(adjusted_binned(x[rr, cc], y[rr, cc], dist_bin[rr, cc], x_edges, w))
    null, null_curves = [], []
    for _ in range(n_shuffle):
        perm = rng.permutation(n)
        xs = x[np.ix_(perm, perm)]
        ok = valid & np.isfinite(xs)
        rr, cc = np.nonzero(ok)
        null.append(controlled_slope(xs[rr, cc], y[rr, cc], dist_bin[rr, cc]))
        null_curves.append(adjusted_binned(xs[rr, cc], y[rr, cc], dist_bin[rr, cc], x_edges))
    boot, null = np.array(boot), np.array(null)
    boot_curves, null_curves = np.array(boot_curves), np.array(null_curves)
    null_f = null[np.isfinite(null)]
    null_mean = float(null_f.mean()) if len(null_f) else float("nan")
    null_sd = float(null_f.std(ddof=1)) if len(null_f) > 1 else float("nan")
    with np.errstate(invalid="ignore"):
        binned = pd.DataFrame({
            "bin_low": x_edges[:-1], "bin_high": x_edges[1:], "n": counts, "mean": curve,
            "ci_low": np.nanpercentile(boot_curves, 2.5, axis=0) if n_boot else np.nan,
            "ci_high": np.nanpercentile(boot_curves, 97.5, axis=0) if n_boot else np.nan,
            "null_low": np.nanpercentile(null_curves, 2.5, axis=0) if n_shuffle else np.nan,
            "null_high": np.nanpercentile(null_curves, 97.5, axis=0) if n_shuffle else np.nan,
            "null_mean": np.nanmean(null_curves, axis=0) if n_shuffle else np.nan,
        })
    return {
        "slope": slope,
        "ci_low": _percentile(boot, 2.5),
        "ci_high": _percentile(boot, 97.5),
        "relative_slope": relative,
        "relative_ci_low": _percentile(boot_relative, 2.5),
        "relative_ci_high": _percentile(boot_relative, 97.5),
        "null_mean": null_mean,
        "null_sd": null_sd,
        "null_ci_low": _percentile(null_f, 2.5),
        "null_ci_high": _percentile(null_f, 97.5),
        "p_value": float((np.abs(null_f - null_mean) >= abs(slope - null_mean)).mean()) if len(null_f) else float("nan"),
        "null_flat": bool(len(null_f) > 1 and abs(null_mean) <= 3 * null_sd / np.sqrt(len(null_f))),
        "n_neurons": int(n),
        "n_pairs": int(valid.sum()),
        "n_connected": int((y[r, c] > 0).sum()),
        "binned": binned,
    }


def unit_table(matches: pd.DataFrame, tuning: pd.DataFrame, neurons: pd.DataFrame, min_confidence: float = 0.0,
               min_reliability: float | None = None) -> pd.DataFrame:
    """Functionally characterised neurons: matched ROIs (confidence >= min) joined with tuning and soma positions.

    ``matches``: roi_id, neuron_id (0 = unmatched), confidence; ``neurons``: id, soma_{x,y,z}_nm.
    """
    m = matches[(matches["neuron_id"] > 0) & (matches.get("confidence", 1.0) >= min_confidence)]
    units = m[["roi_id", "neuron_id"]].merge(tuning, on="roi_id")
    if min_reliability is not None:
        units = units[units["reliability"].fillna(-np.inf) >= min_reliability]
    pos = neurons[["id", "soma_x_nm", "soma_y_nm", "soma_z_nm"]].rename(columns={"id": "neuron_id"})
    pos = pos.assign(neuron_id=pos["neuron_id"].astype(np.uint64))
    units = units.assign(neuron_id=units["neuron_id"].astype(np.uint64)).merge(pos, on="neuron_id")
    return units.drop_duplicates("neuron_id").reset_index(drop=True)


def run_like_to_like(units: pd.DataFrame, responses_by_roi: dict, edges: pd.DataFrame, params: dict,
                     seed: int = 0) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """All like-to-like analyses for one set of units.

    ``responses_by_roi`` maps roi_id -> (stimulus, trial) responses. ``params``: ``min_synapses``,
    ``distance_bins``, ``signal_corr_bins``, ``ori_bins_deg``, ``bootstrap``, ``shuffles``.
    Returns ``(summary, binned table, pair table)``; summary keys are ``{measure}_vs_{x}`` with ``measure`` in
    (connection, synapses) and ``x`` in (signal_corr, ori_diff), each an :func:`analyse` result without its table.
    """
    ids = units["neuron_id"].to_numpy(np.uint64)
    n = len(ids)
    if n < 3:
        raise ValueError(f"like-to-like needs >= 3 functionally matched neurons, got {n}")
    resp = np.stack([responses_by_roi[int(r)] for r in units["roi_id"]])
    sc = signal_correlation(resp)
    pref = units["pref_orientation_deg"].to_numpy(float)
    dori = orientation_difference(pref[:, None], pref[None, :])
    pos = units[["soma_x_nm", "soma_y_nm", "soma_z_nm"]].to_numpy(float) / 1000.0
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    conn, nsyn = adjacency(ids, edges, params["min_synapses"])
    off = ~np.eye(n, dtype=bool)
    dbin, dedges = distance_bins(dist, off, params["distance_bins"])
    summary, tables = {}, []
    for xname, xmat, xedges in (("signal_corr", sc, params["signal_corr_bins"]),
                                ("ori_diff", dori, params["ori_bins_deg"])):
        for yname, ymat in (("connection", conn), ("synapses", nsyn)):
            res = analyse(xmat, ymat, dbin, ids, xedges, params["bootstrap"], params["shuffles"], seed)
            tables.append(res.pop("binned").assign(measure=yname, x=xname))
            summary[f"{yname}_vs_{xname}"] = res
    summary["distance_bin_edges_um"] = dedges.tolist()
    r, c = np.nonzero(off)
    pairs = pd.DataFrame({
        "pre": ids[r], "post": ids[c], "signal_corr": sc[r, c], "ori_diff_deg": dori[r, c],
        "distance_um": dist[r, c], "distance_bin": dbin[r, c], "connected": conn[r, c].astype(bool),
        "n_synapses": nsyn[r, c],
    })
    return summary, pd.concat(tables, ignore_index=True), pairs


def wilson(k: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson 95 % interval for binomial proportions ``k / n`` (NaN where n = 0)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def connectivity_vs_distance(neurons: pd.DataFrame, edges: pd.DataFrame, bin_um: float,
                             min_synapses: int = 1) -> pd.DataFrame:
    """Connection probability of ordered neuron pairs per soma-distance bin (µm) with Wilson 95 % CIs."""
    ids = neurons["id"].to_numpy(np.uint64)
    pos = neurons[["soma_x_nm", "soma_y_nm", "soma_z_nm"]].to_numpy(float) / 1000.0
    conn, _ = adjacency(ids, edges, min_synapses)
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    off = ~np.eye(len(ids), dtype=bool)
    d, c = dist[off], conn[off]
    edges_um = np.arange(0, (d.max() if len(d) else 0) + bin_um, bin_um)
    if len(edges_um) < 2:
        edges_um = np.array([0.0, bin_um])
    idx = np.clip(np.searchsorted(edges_um, d, side="right") - 1, 0, len(edges_um) - 2)
    k = len(edges_um) - 1
    npairs = np.bincount(idx, minlength=k)
    nconn = np.bincount(idx, c, minlength=k)
    lo, hi = wilson(nconn, npairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = nconn / npairs
    return pd.DataFrame({"bin_low_um": edges_um[:-1], "bin_high_um": edges_um[1:], "n_pairs": npairs,
                         "n_connected": nconn.astype(int), "p_connection": p, "ci_low": lo, "ci_high": hi})


def celltype_connectivity(cell_types: pd.DataFrame, edges: pd.DataFrame, min_synapses: int = 1) -> pd.DataFrame:
    """Connection probability and synapses per connection for each (pre type, post type), Wilson 95 % CIs."""
    ids = cell_types["id"].to_numpy(np.uint64)
    types = cell_types["cell_type"].to_numpy(str)
    conn, nsyn = adjacency(ids, edges, min_synapses)
    rows = []
    for a in sorted(set(types)):
        for b in sorted(set(types)):
            ia, ib = types == a, types == b
            block = np.ix_(ia, ib)
            npairs = ia.sum() * ib.sum() - (ia & ib).sum()
            k = conn[block].sum()
            lo, hi = wilson(k, npairs)
            rows.append({"pre_type": a, "post_type": b, "n_pairs": int(npairs), "n_connected": int(k),
                         "p_connection": k / npairs if npairs else np.nan, "ci_low": float(lo), "ci_high": float(hi),
                         "synapses_per_connection": nsyn[block][conn[block] > 0].mean() if k else np.nan})
    columns = ["pre_type", "post_type", "n_pairs", "n_connected", "p_connection", "ci_low", "ci_high",
               "synapses_per_connection"]
    return pd.DataFrame(rows, columns=columns)
