"""Synapse detection accuracy: one-to-one matching of detected and ground-truth synapses, partner accuracy.

* Matching: detected and ground-truth cleft centres (nm) are paired one-to-one within ``tolerance_nm`` (default
  200 nm) by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on a gated distance matrix: pairs
  farther than the tolerance cost more than all feasible pairs together, so the assignment maximises the number of
  matches first and minimises their summed distance second. Greedy nearest-first matching can find fewer matches.
  The problem is split into connected groups of the gating graph (a k-d tree finds the feasible pairs), so big
  tables never build a dense matrix.
* ``precision`` = matches / detected, ``recall`` = matches / ground truth, ``f1``.
* ``partner_accuracy``: the share of matched synapses whose predicted pre and post segments both map to the ground
  truth's ``pre`` and ``post`` objects; a predicted segment maps to the ground-truth label it overlaps most (voxel
  counts, label 0 ignored on both sides), computed slab by slab.
"""

from __future__ import annotations

import json

import numpy as np

from connectomix import io
from connectomix.evaluate import write_stage_metrics
from connectomix.evaluate.segmentation import load_mask

DEFAULT_TOLERANCE_NM = 200.0


def match_points(pred: np.ndarray, gt: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of two point sets within ``tolerance`` (same units as the points).

    Returns index arrays ``(i_pred, i_gt)`` of the matched pairs (maximum number of pairs, then minimum total
    distance), sorted by ``i_pred``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pred = np.asarray(pred, float).reshape(-1, 3)
    gt = np.asarray(gt, float).reshape(-1, 3)
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    near = cKDTree(pred).sparse_distance_matrix(cKDTree(gt), tolerance, output_type="coo_matrix")
    rows, cols, dist = near.row, near.col, near.data
    # sparse_distance_matrix drops exact zero distances; add coincident points back.
    same = cKDTree(pred).query_ball_tree(cKDTree(gt), 0.0)
    extra = [(i, j) for i, js in enumerate(same) for j in js]
    if extra:
        er, ec = np.array(extra).T
        rows, cols, dist = np.concatenate([rows, er]), np.concatenate([cols, ec]), np.concatenate([dist, 0 * er])
    if len(rows) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    n, m = len(pred), len(gt)
    graph = coo_matrix((np.ones(len(rows)), (rows, n + cols)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    out_p, out_g = [], []
    for c in np.unique(comp[rows]):
        sel = comp[rows] == c
        r, q, d = rows[sel], cols[sel], dist[sel]
        ur, ri = np.unique(r, return_inverse=True)
        uq, qi = np.unique(q, return_inverse=True)
        big = (len(ur) + len(uq) + 1) * (tolerance + 1.0)  # more than any set of feasible pairs costs
        cost = np.full((len(ur), len(uq)), big)
        np.minimum.at(cost, (ri, qi), d)
        a, b = linear_sum_assignment(cost)
        ok = cost[a, b] < big
        out_p.append(ur[a[ok]])
        out_g.append(uq[b[ok]])
    i_pred = np.concatenate(out_p).astype(int)
    i_gt = np.concatenate(out_g).astype(int)
    order = np.argsort(i_pred)
    return i_pred[order], i_gt[order]


def prf(matches: int, n_pred: int, n_gt: int) -> dict:
    """Precision, recall and F1 (1.0 for an empty side with nothing to find or report)."""
    precision = matches / n_pred if n_pred else 1.0
    recall = matches / n_gt if n_gt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def segment_to_gt(seg, gt, slab: int = 16):
    """Map each segment id to the ground-truth label it overlaps most (voxels; 0 ignored on both sides).

    ``seg`` and ``gt`` are arrays of one shape (numpy or zarr), read ``slab`` sections at a time. Returns a pandas
    Series indexed by segment id (uint64) with the ground-truth id, plus its overlap as ``.attrs['overlap']``.
    """
    import fastremap
    import pandas as pd

    if tuple(seg.shape) != tuple(gt.shape):
        raise ValueError(f"segmentation {tuple(seg.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    parts = []
    for z in range(0, seg.shape[0], slab):
        s = np.asarray(seg[z:z + slab]).ravel()
        g = np.asarray(gt[z:z + slab]).ravel()
        both = (s > 0) & (g > 0)
        if not both.any():
            continue
        s, g = s[both], g[both]
        su, si = fastremap.unique(s, return_inverse=True)
        gu, gi = fastremap.unique(g, return_inverse=True)
        code = si.astype(np.int64) * len(gu) + gi.astype(np.int64)
        uc, counts = np.unique(code, return_counts=True)
        parts.append(pd.DataFrame({"seg": su[uc // len(gu)].astype(np.uint64), "gt": gu[uc % len(gu)].astype(np.uint64),
                                   "n": counts}))
    if not parts:
        return pd.Series(dtype=np.uint64)
    df = pd.concat(parts).groupby(["seg", "gt"], sort=True)["n"].sum().reset_index()
    best = df.sort_values(["n", "gt"], ascending=[False, True], kind="stable").drop_duplicates("seg")
    best = best.sort_values("seg")
    out = pd.Series(best["gt"].to_numpy(np.uint64), index=best["seg"].to_numpy(np.uint64))
    out.attrs["overlap"] = dict(zip(best["seg"].tolist(), best["n"].tolist()))
    return out


def positions_zyx(table, prefix: str) -> np.ndarray:
    """(n, 3) positions in nm, z y x, from CAVE list columns ``{prefix}_pt_position`` ([x, y, z]) or from
    ``{prefix}_z_nm``-style columns (ground truth)."""
    col = f"{prefix}_pt_position"
    if col in table.columns:
        xyz = np.array([list(p) for p in table[col]], float).reshape(-1, 3)
        return xyz[:, ::-1]
    return table[[f"{prefix}_z_nm", f"{prefix}_y_nm", f"{prefix}_x_nm"]].to_numpy(float).reshape(-1, 3)


def evaluate(pred, gt, tolerance_nm: float = DEFAULT_TOLERANCE_NM, seg_to_gt=None) -> dict:
    """Metrics of a CAVE-style synapse table against ``gt/synapses.parquet`` (see the module docstring)."""
    i_pred, i_gt = match_points(positions_zyx(pred, "ctr"), positions_zyx(gt, "ctr"), tolerance_nm)
    metrics = prf(len(i_pred), len(pred), len(gt))
    metrics.update(n_pred=int(len(pred)), n_gt=int(len(gt)), n_matched=int(len(i_pred)))
    if len(i_pred):
        d = np.linalg.norm(positions_zyx(pred, "ctr")[i_pred] - positions_zyx(gt, "ctr")[i_gt], axis=1)
        metrics["mean_distance_nm"] = float(d.mean())
    if seg_to_gt is not None:
        lut = seg_to_gt.to_dict() if hasattr(seg_to_gt, "to_dict") else dict(seg_to_gt)
        pre = np.array([lut.get(int(v), 0) for v in np.asarray(pred["pre_pt_root_id"])[i_pred]], np.uint64)
        post = np.array([lut.get(int(v), 0) for v in np.asarray(pred["post_pt_root_id"])[i_pred]], np.uint64)
        good = (pre == np.asarray(gt["pre"], np.uint64)[i_gt]) & (post == np.asarray(gt["post"], np.uint64)[i_gt])
        metrics["partner_accuracy"] = float(good.mean()) if len(good) else 0.0
        metrics["n_partners_correct"] = int(good.sum())
    return metrics


def cleft_object_prf(pred: np.ndarray, truth: np.ndarray, voxel_size, tolerance_nm: float = 200.0,
                     min_size: int = 10) -> dict:
    """Cleft detection P/R/F1: 26-connected components (predicted ones of at least ``min_size`` voxels), matched
    one-to-one by centre of mass within ``tolerance_nm`` (as the synapse evaluation does)."""
    import cc3d
    from scipy import ndimage

    def centres(mask, min_voxels):
        labels = cc3d.dust(cc3d.connected_components(mask, connectivity=26), threshold=min_voxels,
                           connectivity=26)
        ids = np.unique(labels)[1:]
        if not len(ids):
            return np.zeros((0, 3))
        return np.array(ndimage.center_of_mass(mask, labels, ids)) * np.asarray(voxel_size, float)

    p, t = centres(pred, min_size), centres(truth, 1)
    matched = len(match_points(p, t, tolerance_nm)[0])
    precision = matched / len(p) if len(p) else float(len(t) == 0)
    recall = matched / len(t) if len(t) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def evaluate_clefts(volume, gt_mask: np.ndarray, tolerance_nm: float = DEFAULT_TOLERANCE_NM,
                    clefts: str = "clefts") -> dict:
    """Detected clefts (the stitched ``clefts`` array of ``volume``) against a ground-truth cleft mask of the same
    shape: :func:`cleft_object_prf` plus the object counts."""
    import cc3d

    detected = np.asarray(io.open_array(volume, clefts)[...]) > 0
    truth = np.asarray(gt_mask) > 0
    if detected.shape != truth.shape:
        raise ValueError(f"cleft ground truth: shape {list(truth.shape)} differs from {volume}/{clefts} "
                         f"{list(detected.shape)} (crop it, or give --gt-roi-offset for a dataset ROI)")
    voxel_size = io.read_meta(volume, clefts).voxel_size
    metrics = cleft_object_prf(detected, truth, voxel_size, tolerance_nm, min_size=1)
    metrics["n_pred"] = int(cc3d.connected_components(detected, connectivity=26).max())
    metrics["n_gt"] = int(cc3d.connected_components(truth, connectivity=26).max())
    return metrics


def add_arguments(subparsers) -> None:
    """The ``connectomix evaluate synapses`` and ``evaluate clefts`` actions."""
    c = subparsers.add_parser("clefts", help="detected clefts vs a ground-truth cleft mask: object P/R/F1")
    c.add_argument("--volume", required=True, help="OME-Zarr with the stitched `clefts`")
    c.add_argument("--gt-file", required=True, help="cleft mask: a folder of section PNGs, HDF5 or zarr")
    c.add_argument("--gt-key", help="dataset inside --gt-file (HDF5 default 'stack')")
    c.add_argument("--gt-format", default="auto", choices=["auto", "hdf5", "zarr", "png-mask"])
    c.add_argument("--gt-roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="crop --gt-file to the volume from this voxel (the dataset's roi.offset)")
    c.add_argument("--tolerance-nm", type=float, default=DEFAULT_TOLERANCE_NM, help="matching distance, nm")
    c.add_argument("--out", required=True, help="eval/clefts.json to write")
    c.set_defaults(func=run_clefts)
    p = subparsers.add_parser("synapses", help="synapse P/R/F1 (Hungarian matching) and partner accuracy")
    p.add_argument("--synapses", required=True, help="predicted synapses.parquet")
    p.add_argument("--gt-synapses", required=True, help="gt/synapses.parquet")
    p.add_argument("--volume", help="OME-Zarr with the segmentation and gt/labels (for partner accuracy)")
    p.add_argument("--segmentation", default="segmentation", help="segment label array in --volume")
    p.add_argument("--gt-labels", default="gt/labels", help="ground-truth label array in --volume")
    p.add_argument("--tolerance-nm", type=float, default=DEFAULT_TOLERANCE_NM, help="matching distance, nm")
    p.add_argument("--out", required=True, help="eval/synapses.json to write")
    p.set_defaults(func=run)


def run(args) -> int:
    """Evaluate and write ``eval/synapses.json``."""
    import pandas as pd

    pred = pd.read_parquet(args.synapses)
    gt = pd.read_parquet(args.gt_synapses)
    mapping = None
    if args.volume:
        mapping = segment_to_gt(io.open_array(args.volume, args.segmentation), io.open_array(args.volume, args.gt_labels))
    metrics = evaluate(pred, gt, args.tolerance_nm, mapping)
    write_stage_metrics(args.out, "synapses", metrics, tolerance_nm=args.tolerance_nm,
                        inputs={"synapses": str(args.synapses), "gt_synapses": str(args.gt_synapses),
                                "segmentation": args.segmentation})
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def run_clefts(args) -> int:
    """Evaluate the detected clefts against a mask and write ``eval/clefts.json``."""
    mask = load_mask(args.gt_file, args.gt_key, args.gt_format)
    if args.gt_roi_offset:
        shape = io.open_array(args.volume, "clefts").shape
        mask = mask[tuple(slice(o, o + n) for o, n in zip(args.gt_roi_offset, shape))]
    metrics = evaluate_clefts(args.volume, mask, args.tolerance_nm)
    write_stage_metrics(args.out, "clefts", metrics, tolerance_nm=args.tolerance_nm,
                        inputs={"clefts": f"{args.volume}/clefts", "gt": str(args.gt_file)})
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


__all__ = ["match_points", "prf", "segment_to_gt", "evaluate", "positions_zyx", "cleft_object_prf",
           "evaluate_clefts"]
