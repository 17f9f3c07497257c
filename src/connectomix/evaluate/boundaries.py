"""Voxel-wise accuracy of boolean maps: precision/recall/F1, boundaries from affinities and from ground-truth
labels (validation during training, boundary benchmarks)."""

from __future__ import annotations

import numpy as np


def prf(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Precision, recall, F1 of boolean predictions against boolean truth (optionally masked)."""
    if mask is not None:
        pred, truth = pred[mask], truth[mask]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def boundary_map(aff: np.ndarray, mode: str = "min", in_plane: bool = True) -> np.ndarray:
    """Voxel boundary probability from nearest-neighbour affinities (channels z, y, x first).

    Each voxel has up to 4 (in-plane) or 6 incident edges. ``mode='min'``: 1 - the weakest incident affinity
    (both sides of a label transition are boundary); ``'max'``: 1 - the strongest (only voxels cut off from all
    neighbours, e.g. label-0 membrane voxels as in gala's ground truth).
    """
    axes = (1, 2) if in_plane else (0, 1, 2)
    incident = []
    for axis in axes:
        a = aff[axis].astype(np.float32)
        incident.append(a)
        # the edge v -> v - e, seen from v - e: shift back by one; voxels at the far end have no such edge
        shifted = np.full_like(a, np.nan)
        index_dst = [slice(None)] * 3
        index_src = [slice(None)] * 3
        index_dst[axis] = slice(0, -1)
        index_src[axis] = slice(1, None)
        shifted[tuple(index_dst)] = a[tuple(index_src)]
        incident.append(shifted)
    stack = np.stack(incident)
    reduced = np.nanmin(stack, axis=0) if mode == "min" else np.nanmax(stack, axis=0)
    return 1.0 - reduced


def boundary_prf(pred: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> dict:
    """Boundary P/R/F1 where a hit may be ``tolerance`` voxels away in-plane (per section)."""
    if tolerance <= 0:
        return prf(pred, truth)
    from scipy import ndimage

    st = np.zeros((1, 2 * tolerance + 1, 2 * tolerance + 1), dtype=bool)
    st[0] = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), tolerance)
    truth_d = ndimage.binary_dilation(truth, st)
    pred_d = ndimage.binary_dilation(pred, st)
    tp_p = int(np.count_nonzero(pred & truth_d))
    tp_r = int(np.count_nonzero(truth & pred_d))
    p = tp_p / max(1, int(pred.sum()))
    r = tp_r / max(1, int(truth.sum()))
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def gt_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels with label 0 or an in-plane 4-neighbour of a different label."""
    b = labels == 0
    for axis in (1, 2):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        b[tuple(lo)] |= diff
        b[tuple(hi)] |= diff
    return b
