"""Analysis validation against the phantom.

* ``eval/celltypes.json`` (stage ``celltypes``): ``accuracy`` of the unsupervised excitatory/inhibitory labels vs the
  GT ``cell_class``, over reconstructed neurons identified with GT neurons by soma position (one-to-one, within the
  radius; see ``evaluate.coregister.match_to_gt``); also ``balanced_accuracy`` and ``n``.
* ``eval/like_to_like.json`` (stage ``like_to_like``): the reconstruction's distance-controlled slope of connection
  probability on signal correlation (``slope``, ``ci_low``, ``ci_high``) and the same analysis on the ground truth
  (GT ROI partners, GT edges, GT soma positions, same responses and parameters: ``gt_slope``, ``gt_ci_low``,
  ``gt_ci_high``); ``within_gt_ci`` (1 when the slope lies in the GT 95 % CI and rests on at least
  ``validation_min_pairs`` connected pairs: with a handful any slope can fall in it); the same for the relative slope
  (slope / mean connection probability, which a reconstruction missing a random share of the connections keeps:
  ``relative_slope``, ``gt_relative_slope``, their CIs, ``relative_within_gt_ci``); shuffle nulls (``null_mean``,
  ``null_sd``, ``null_flat``, ``gt_null_flat``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from connectomix.evaluate import write_stage_metrics
from connectomix.evaluate.coregister import match_to_gt


def celltype_metrics(cell_types: pd.DataFrame, neurons: pd.DataFrame, gt_neurons: pd.DataFrame,
                     radius_nm: float) -> dict:
    """Accuracy and balanced accuracy of predicted cell types vs GT ``cell_class``."""
    to_gt = match_to_gt(neurons, gt_neurons, radius_nm)
    gt_class = dict(zip(gt_neurons["id"].astype(np.int64), gt_neurons["cell_class"].astype(str)))
    pred, true = [], []
    for nid, ctype in zip(cell_types["id"].astype(np.int64), cell_types["cell_type"].astype(str)):
        if int(nid) in to_gt:
            pred.append(ctype)
            true.append(gt_class[to_gt[int(nid)]])
    pred, true = np.array(pred), np.array(true)
    if not len(pred):
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0}
    recalls = [float((pred[true == c] == c).mean()) for c in np.unique(true)]
    return {"accuracy": float((pred == true).mean()), "balanced_accuracy": float(np.mean(recalls)), "n": int(len(pred))}


def gt_like_to_like(rois_gt: pd.DataFrame, responses: np.ndarray, stimuli: pd.DataFrame, gt_neurons: pd.DataFrame,
                    gt_edges: pd.DataFrame, params: dict) -> dict:
    """The like-to-like analysis run on the ground-truth connectome with the GT ROI partners."""
    from connectomix.analysis import like_to_like, tuning

    ltl = params["like_to_like"]
    tun = tuning.tuning_table(rois_gt, responses, stimuli, params["tuning"]["split_half_repeats"], params["seed"])
    matches = pd.DataFrame({"roi_id": rois_gt["roi_id"], "neuron_id": rois_gt["neuron_id"].astype(np.uint64),
                            "confidence": 1.0})
    units = like_to_like.unit_table(matches, tun, gt_neurons, 0.0, ltl["min_reliability"])
    by_roi = {int(r): responses[i] for i, r in enumerate(rois_gt["roi_id"])}
    summary, _, _ = like_to_like.run_like_to_like(units, by_roi, gt_edges, ltl, params["seed"])
    return summary


def _relative(recon: dict | None, gt: dict, powered: bool = True) -> dict:
    """The relative-slope metrics (NaN, and not within the GT CI, where the reconstruction has none)."""
    recon, nan = recon or {}, float("nan")
    out = {f"{prefix}{key}": source.get(key, nan) for prefix, source in (("", recon), ("gt_", gt))
           for key in ("relative_slope", "relative_ci_low", "relative_ci_high")}
    out["relative_within_gt_ci"] = int(powered and bool(out["gt_relative_ci_low"] <= out["relative_slope"]
                                                        <= out["gt_relative_ci_high"]))
    return out


def like_to_like_metrics(recon: dict, gt: dict, min_pairs: int = 10) -> dict:
    """Flat metrics comparing the reconstruction's analyses (``like_to_like.json``) with the GT run; a slope is
    within the GT CI only when it rests on at least ``min_pairs`` connected pairs."""
    g, go = gt["connection_vs_signal_corr"], gt["connection_vs_ori_diff"]
    if "p_value" not in recon["analyses"].get("connection_vs_signal_corr", {}):
        # the reconstruction had too few matched neurons for the analysis: NaN metrics, not a crash
        return {"slope": float("nan"), "gt_slope": g["slope"], "gt_ci_low": g["ci_low"], "gt_ci_high": g["ci_high"],
                "within_gt_ci": 0, **_relative(None, g), "null_flat": 0, "gt_null_flat": int(g["null_flat"]),
                "n_neurons": recon.get("n_units", 0), "gt_n_neurons": g["n_neurons"],
                "gt_n_connected_pairs": g["n_connected"]}
    r, ro = recon["analyses"]["connection_vs_signal_corr"], recon["analyses"]["connection_vs_ori_diff"]
    powered = r["n_connected"] >= min_pairs
    return {
        "slope": r["slope"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
        "gt_slope": g["slope"], "gt_ci_low": g["ci_low"], "gt_ci_high": g["ci_high"],
        "within_gt_ci": int(powered and g["ci_low"] <= r["slope"] <= g["ci_high"]),
        **_relative(r, g, powered),
        "p_value": r["p_value"], "gt_p_value": g["p_value"],
        "null_mean": r["null_mean"], "null_sd": r["null_sd"], "null_flat": int(r["null_flat"]),
        "gt_null_flat": int(g["null_flat"]),
        "ori_slope": ro["slope"], "gt_ori_slope": go["slope"], "gt_ori_ci_low": go["ci_low"],
        "gt_ori_ci_high": go["ci_high"],
        "n_neurons": r["n_neurons"], "gt_n_neurons": g["n_neurons"],
        # connected pairs among the matched neurons: with a handful, no slope can be told from the null
        "n_connected_pairs": r["n_connected"], "gt_n_connected_pairs": g["n_connected"],
    }


def add_arguments(subparsers) -> None:
    p = subparsers.add_parser("analysis", help="cell types and like-to-like vs GT -> eval/celltypes.json, "
                                              "eval/like_to_like.json")
    p.add_argument("--cell-types", required=True, help="analysis/cell_types.parquet")
    p.add_argument("--like-to-like", required=True, help="analysis/like_to_like.json")
    p.add_argument("--neurons", required=True, help="reconstructed neurons.parquet")
    p.add_argument("--gt-neurons", required=True)
    p.add_argument("--gt-edges", required=True)
    p.add_argument("--rois-gt", required=True, help="gt/functional/rois.parquet (with the GT neuron_id)")
    p.add_argument("--responses", required=True)
    p.add_argument("--stimuli", required=True)
    p.add_argument("--params", default="{}", help="JSON: the config's analysis section")
    p.add_argument("--celltypes-out", required=True)
    p.add_argument("--like-to-like-out", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from connectomix import config
    from connectomix.coregister import load_functional, read_table

    params = config.resolve("analysis", json.loads(args.params))
    gt_neurons = read_table(args.gt_neurons)
    ct = celltype_metrics(read_table(args.cell_types), read_table(args.neurons), gt_neurons,
                          params["soma_match_radius_nm"])
    write_stage_metrics(args.celltypes_out, "celltypes", ct, soma_match_radius_nm=params["soma_match_radius_nm"])
    _, responses, stimuli = load_functional(args.rois_gt, args.responses, args.stimuli)
    rois_gt = read_table(args.rois_gt)
    gt = gt_like_to_like(rois_gt, responses, stimuli, gt_neurons, read_table(args.gt_edges), params)
    recon = json.loads(open(args.like_to_like).read())
    ltl = like_to_like_metrics(recon, gt, params["validation_min_pairs"])
    write_stage_metrics(args.like_to_like_out, "like_to_like", ltl)
    print(json.dumps({"celltypes": ct, "like_to_like": ltl}, indent=1))
    return 0
