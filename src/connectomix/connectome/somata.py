"""Which segments are neurons, and where their somata are.

Soma detection: ``morphology.parquet`` (skeleton stage) decides when it has soma columns (``soma_radius_nm`` > 0, or
a boolean ``has_soma``). Without it (or without those columns) the documented fallback is used: the distance
transform of the segmentation subsampled to ``soma_step_nm``, distances to the nearest segment boundary (the volume
faces are not boundaries); a segment whose largest inscribed radius reaches ``soma_min_radius_nm`` is a neuron and
its soma is the point of that maximum.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage


def soma_by_distance_transform(seg, voxel_size, offset_nm=(0, 0, 0), step_nm: float = 40.0,
                               min_radius_nm: float = 1500.0):
    """Fallback soma detection (see the module docstring). ``seg`` is a numpy or zarr label array.

    Returns a DataFrame ``id, soma_radius_nm, soma_z_nm, soma_y_nm, soma_x_nm, is_neuron`` for every nonzero id.
    """
    steps = [max(1, int(round(step_nm / v))) for v in voxel_size]
    labels = np.asarray(seg[::steps[0], ::steps[1], ::steps[2]])
    sampling = [v * s for v, s in zip(voxel_size, steps)]
    boundary = labels == 0
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        boundary[tuple(a)] |= diff
        boundary[tuple(b)] |= diff
    if boundary.all() or not boundary.any():
        # no interior at all, or one label everywhere: the distance is unbounded; use the half-extent instead
        dist = np.zeros(labels.shape) if boundary.all() else np.full(labels.shape, min(
            s * v for s, v in zip(labels.shape, sampling)) / 2)
    else:
        dist = ndimage.distance_transform_edt(~boundary, sampling=sampling)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return pd.DataFrame({"id": np.zeros(0, np.uint64), "soma_radius_nm": [], "soma_z_nm": [], "soma_y_nm": [],
                             "soma_x_nm": [], "is_neuron": np.zeros(0, bool)})
    radius = np.asarray(ndimage.maximum(dist, labels, ids), float)
    where = np.array(ndimage.maximum_position(dist, labels, ids), float).reshape(-1, 3)
    pos = offset_nm + where * np.array(sampling)
    return pd.DataFrame({"id": ids.astype(np.uint64), "soma_radius_nm": radius, "soma_z_nm": pos[:, 0],
                         "soma_y_nm": pos[:, 1], "soma_x_nm": pos[:, 2], "is_neuron": radius >= min_radius_nm})


def somata_from_morphology(morph):
    """Soma table from ``morphology.parquet``, or None when it has no soma columns."""
    id_col = "id" if "id" in morph.columns else ("segment_id" if "segment_id" in morph.columns else None)
    if id_col is None or not ({"soma_radius_nm", "has_soma"} & set(morph.columns)):
        return None
    out = pd.DataFrame({"id": morph[id_col].to_numpy(np.uint64)})
    for axis in "zyx":
        col = f"soma_{axis}_nm"
        out[col] = morph[col].to_numpy(float) if col in morph.columns else np.nan
    out["soma_radius_nm"] = morph["soma_radius_nm"].to_numpy(float) if "soma_radius_nm" in morph.columns else np.nan
    for col in ("soma_volume_nm3", "soma_truncated"):
        if col in morph.columns:
            out[col] = morph[col].to_numpy()
    if "has_soma" in morph.columns:
        out["is_neuron"] = morph["has_soma"].fillna(False).to_numpy(bool)
    else:
        out["is_neuron"] = (out["soma_radius_nm"].fillna(0) > 0).to_numpy()
    return out
