"""One-to-one assignment of ROIs to EM somata, and the whole co-registration (:func:`coregister`).

An integer linear program (pulp, CBC): binary ``x[r, s]`` for ROI/soma pairs within the gate and ``u[r]`` for
"ROI unmatched"; minimise ``sum d[r, s] x[r, s] + C sum u[r]`` subject to ``sum_s x[r, s] + u[r] = 1`` (each ROI
matched once or left unmatched) and ``sum_r x[r, s] <= 1`` (at most one ROI per soma).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from connectomix import config
from connectomix.coregister.tables import ROI_COLUMNS, SOMA_COLUMNS
from connectomix.coregister.transform import apply_affine, estimate_transform, sigma_upper_bound


def assign_ilp(
    distances: np.ndarray, gate: float, unmatched_cost: float | None = None, sigma: float | None = None
) -> pd.DataFrame:
    """One-to-one ROI -> soma assignment by integer linear programming (pulp + CBC).

    ``distances`` is (n_roi, n_soma) in µm. Pairs beyond ``gate`` are never considered; leaving an ROI unmatched costs
    ``unmatched_cost`` (default: the gate). Returns one row per ROI: ``roi`` (row index), ``soma`` (column index or
    -1), ``distance`` (NaN when unmatched) and ``confidence``: the match's Gaussian weight ``w = exp(-d^2 / 2 sigma^2)``
    over itself plus every competing pair in its row and column and the unmatched option (0 when unmatched;
    two ROIs equidistant to one soma give <= 0.5). ``sigma`` defaults to gate / 3.
    """
    import pulp

    distances = np.asarray(distances, float)
    n, m = distances.shape
    cost_u = gate if unmatched_cost is None else float(unmatched_cost)
    sigma = gate / 3 if not sigma or not np.isfinite(sigma) else float(sigma)
    rows, cols = np.nonzero(distances <= gate)
    prob = pulp.LpProblem("roi_soma_assignment", pulp.LpMinimize)
    x = {(r, c): prob.add_variable(f"x_{r}_{c}", cat="Binary") for r, c in zip(rows.tolist(), cols.tolist())}
    u = {r: prob.add_variable(f"u_{r}", cat="Binary") for r in range(n)}
    prob += pulp.lpSum(distances[r, c] * v for (r, c), v in x.items()) + cost_u * pulp.lpSum(u.values())
    by_row: dict[int, list] = {r: [] for r in range(n)}
    by_col: dict[int, list] = {}
    for (r, c), v in x.items():
        by_row[r].append(v)
        by_col.setdefault(c, []).append(v)
    for r in range(n):
        prob += pulp.lpSum(by_row[r]) + u[r] == 1, f"roi_{r}"
    for c, vs in by_col.items():
        if len(vs) > 1:
            prob += pulp.lpSum(vs) <= 1, f"soma_{c}"
    with warnings.catch_warnings():  # PULP_CBC_CMD (the bundled CBC) is flagged for PuLP 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        solver = pulp.PULP_CBC_CMD(msg=False, threads=1)
    status = prob.solve(solver)
    if pulp.LpStatus[status] != "Optimal":
        raise RuntimeError(f"assignment ILP not solved to optimality: {pulp.LpStatus[status]}")
    soma = np.full(n, -1)
    for (r, c), v in x.items():
        if v.value() is not None and v.value() > 0.5:
            soma[r] = c
    w = np.where(distances <= gate, np.exp(-(distances**2) / (2 * sigma**2)), 0.0)
    w_unmatched = np.exp(-(cost_u**2) / (2 * sigma**2))
    out_d = np.full(n, np.nan)
    conf = np.zeros(n)
    for r in np.flatnonzero(soma >= 0):
        c = soma[r]
        out_d[r] = distances[r, c]
        total = w[r].sum() + w[:, c].sum() - w[r, c] + w_unmatched
        conf[r] = w[r, c] / total if total > 0 else 0.0
    return pd.DataFrame({"roi": np.arange(n), "soma": soma, "distance": out_d, "confidence": conf})


def coregister(rois: pd.DataFrame, somata: pd.DataFrame, params: dict, landmarks: list | None = None):
    """Fit the transform and assign ROIs to somata.

    Returns ``(matches, fit, effective_gate_um)``; ``matches`` has one row per ROI: ``roi_id``, ``neuron_id`` (0 when
    unmatched), ``distance`` (µm, NaN when unmatched), ``confidence`` (0-1).
    """
    em = somata[list(SOMA_COLUMNS)].to_numpy(float)
    q = rois[list(ROI_COLUMNS[1:])].to_numpy(float)
    fit = estimate_transform(em, q, params, landmarks)
    gate = params["gate_um"]
    if params["gate_sigmas"] > 0 and np.isfinite(fit.sigma_um) and fit.n_inliers >= 8:
        gate = min(gate, params["gate_sigmas"] * sigma_upper_bound(fit.sigma_um, fit.n_inliers))
    moved = apply_affine(fit.matrix, em)
    dist = np.linalg.norm(q[:, None] - moved[None], axis=-1)
    unmatched = params.get("unmatched_cost_um")
    assigned = assign_ilp(dist, gate, gate if unmatched is None else unmatched, fit.sigma_um)
    ids = somata["id"].to_numpy()
    matches = pd.DataFrame({
        "roi_id": rois["roi_id"].to_numpy(np.int64),
        "neuron_id": np.where(assigned["soma"] >= 0, ids[np.maximum(assigned["soma"], 0)], 0).astype(np.uint64),
        "distance": assigned["distance"].to_numpy(float),
        "confidence": assigned["confidence"].to_numpy(float),
    })
    return matches, fit, float(gate)


def merged_params(params: dict | None) -> dict:
    """``params`` over the schema's defaults of the `coregister:` section, without the workflow's keys (the
    functional data and landmarks of each dataset, which the rule passes as files and ``--landmarks``)."""
    return config.resolve("coregister", params, omit=("functional", "landmarks"))
