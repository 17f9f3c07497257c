"""Synapse maps made from a phantom's ground truth (``cleft, pre, post`` with noise): for running and testing the
synapses stage before (or besides) the U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from connectomix import io


def maps_from_ground_truth(labels: np.ndarray, clefts: np.ndarray, synapses, voxel_size, radius_nm: float = 80.0,
                           noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """uint8 (3, z, y, x) ``cleft, pre, post`` maps made from ground truth, with noise.

    cleft: 0.9 on cleft voxels; pre (post): 0.9 on voxels of the synapse's ``pre`` (``post``) object within
    ``radius_nm`` of its cleft; 0.05 elsewhere; then Gaussian noise (sd ``noise``) and clipping to 0..1.
    ``synapses`` is a table with ``id, pre, post`` (as ``gt/synapses.parquet``).
    """
    rng = np.random.default_rng(seed)
    out = np.full((3,) + labels.shape, 0.05, np.float32)
    out[0][clefts > 0] = 0.9
    if (clefts > 0).any():
        dist, idx = ndimage.distance_transform_edt(clefts == 0, sampling=voxel_size, return_indices=True)
        near = clefts[tuple(idx)]
        near[dist > radius_nm] = 0
        pre = dict(zip(np.asarray(synapses["id"], np.uint64).tolist(), np.asarray(synapses["pre"], np.uint64).tolist()))
        post = dict(zip(np.asarray(synapses["id"], np.uint64).tolist(), np.asarray(synapses["post"], np.uint64).tolist()))
        keys = np.array(sorted(pre), np.uint64)
        if len(keys):
            pos = np.clip(np.searchsorted(keys, near), 0, len(keys) - 1)
            known = (keys[pos] == near) & (near > 0)
            pre_of = np.array([pre[int(k)] for k in keys], np.uint64)[pos]
            post_of = np.array([post[int(k)] for k in keys], np.uint64)[pos]
            out[1][known & (labels == pre_of)] = 0.9
            out[2][known & (labels == post_of)] = 0.9
    if noise > 0:
        out += rng.normal(0, noise, out.shape).astype(np.float32)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def write_ground_truth_maps(volume, name: str = "synapse_maps_gt", radius_nm: float = 80.0, noise: float = 0.1,
                            seed: int = 0, gt_dir=None) -> str:
    """Write :func:`maps_from_ground_truth` of a phantom's ``gt/labels`` and ``gt/clefts`` as the array ``name``."""
    meta = io.read_meta(volume, "gt/labels")
    labels = np.asarray(io.open_array(volume, "gt/labels")[...])
    clefts = np.asarray(io.open_array(volume, "gt/clefts")[...])
    gt_dir = Path(gt_dir) if gt_dir else Path(volume).parent / "gt"
    syn = pd.read_parquet(gt_dir / "synapses.parquet")
    maps = maps_from_ground_truth(labels, clefts, syn, meta.voxel_size, radius_nm, noise, seed)
    io.write_full(volume, name, maps, (3,) + tuple(meta.spatial_chunks), meta.voxel_size, meta.offset_nm,
                  channels=("cleft", "pre", "post"), attrs={"source": "ground truth", "noise": noise})
    return name
