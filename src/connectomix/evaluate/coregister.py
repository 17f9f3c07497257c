"""Co-registration accuracy against the phantom: ``eval/coregister.json`` (stage ``coregister``).

Reconstructed neurons are identified with ground-truth neurons by soma position: a one-to-one assignment
(Hungarian) of reconstructed to GT somata minimising distance, keeping pairs within ``radius_nm``.
Metrics: ``accuracy`` (matchable ROIs, i.e. whose GT partner has a reconstructed soma, matched to the right neuron),
``false_match_rate`` (ROIs without a GT partner that were matched), ``precision`` (matched ROIs that are right),
``affine_error_um_rms``/``_max`` (fitted vs true transform over the GT somata, µm) and counts.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from connectomix.coregister.tables import neuron_rows, read_table
from connectomix.coregister.transform import apply_affine
from connectomix.evaluate import write_stage_metrics

SOMA = ["soma_x_nm", "soma_y_nm", "soma_z_nm"]


def match_to_gt(pred: pd.DataFrame, gt: pd.DataFrame, radius_nm: float) -> dict[int, int]:
    """Reconstructed neuron id -> GT neuron id, one-to-one by soma position within ``radius_nm``."""
    pred = neuron_rows(pred)
    p = pred[SOMA].to_numpy(float)
    g = gt[SOMA].to_numpy(float)
    if not len(p) or not len(g):
        return {}
    tree = cKDTree(g)
    big = 1e12
    cost = np.full((len(p), len(g)), big)
    for i, near in enumerate(tree.query_ball_point(p, radius_nm)):
        for j in near:
            cost[i, j] = np.linalg.norm(p[i] - g[j])
    rows, cols = linear_sum_assignment(cost)
    pid, gid = pred["id"].to_numpy(np.int64), gt["id"].to_numpy(np.int64)
    return {int(pid[r]): int(gid[c]) for r, c in zip(rows, cols) if cost[r, c] < big}


def evaluate(matches: pd.DataFrame, rois_gt: pd.DataFrame, neurons: pd.DataFrame, gt_neurons: pd.DataFrame,
             matrix: np.ndarray | None = None, gt_matrix: np.ndarray | None = None,
             radius_nm: float = 2000.0) -> dict:
    """The co-registration metrics (see the module docstring)."""
    to_gt = match_to_gt(neurons, gt_neurons, radius_nm)
    have = set(to_gt.values())
    table = matches.merge(rois_gt[["roi_id", "neuron_id"]].rename(columns={"neuron_id": "gt"}), on="roi_id",
                          how="left")
    gt = table["gt"].fillna(0).to_numpy(np.int64)
    pred = np.array([to_gt.get(int(v), -1) if v > 0 else 0 for v in table["neuron_id"].to_numpy(np.int64)])
    matched = table["neuron_id"].to_numpy(np.int64) > 0
    matchable = np.array([g > 0 and g in have for g in gt], bool)
    no_partner = gt == 0
    metrics = {
        "accuracy": float((pred[matchable] == gt[matchable]).mean()) if matchable.any() else float("nan"),
        "false_match_rate": float(matched[no_partner].mean()) if no_partner.any() else 0.0,
        "precision": float((pred[matched] == gt[matched]).mean()) if matched.any() else float("nan"),
        "n_rois": int(len(table)),
        "n_matchable": int(matchable.sum()),
        "n_no_partner": int(no_partner.sum()),
        "n_partner_not_reconstructed": int(((gt > 0) & ~matchable).sum()),
        "n_matched": int(matched.sum()),
        "n_neurons_identified": len(to_gt),
    }
    if matrix is not None and gt_matrix is not None:
        pts = gt_neurons[SOMA].to_numpy(float)
        err = np.linalg.norm(apply_affine(matrix, pts) - apply_affine(gt_matrix, pts), axis=1)
        metrics["affine_error_um_rms"] = float(np.sqrt((err**2).mean()))
        metrics["affine_error_um_max"] = float(err.max())
    return metrics


def add_arguments(subparsers) -> None:
    p = subparsers.add_parser("coregister", help="co-registration accuracy -> eval/coregister.json")
    p.add_argument("--matches", required=True)
    p.add_argument("--transform", required=True, help="coregister transform JSON (fitted affine)")
    p.add_argument("--rois-gt", required=True, help="gt/functional/rois.parquet (with the GT neuron_id)")
    p.add_argument("--affine-gt", required=True, help="gt/functional/affine.json")
    p.add_argument("--neurons", required=True, help="reconstructed neurons.parquet")
    p.add_argument("--gt-neurons", required=True, help="gt/neurons.parquet")
    p.add_argument("--radius-nm", type=float, default=2000.0, help="soma match radius to identify neurons (nm)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    metrics = evaluate(
        read_table(args.matches), read_table(args.rois_gt), read_table(args.neurons), read_table(args.gt_neurons),
        np.array(json.load(open(args.transform))["matrix"]), np.array(json.load(open(args.affine_gt))["matrix"]),
        args.radius_nm,
    )
    write_stage_metrics(args.out, "coregister", metrics, soma_match_radius_nm=args.radius_nm)
    print(json.dumps(metrics, indent=1))
    return 0
