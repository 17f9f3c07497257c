"""Training targets from ground truth (all bool arrays, see :func:`affinity_targets` and :func:`synapse_targets`).

* affinity for offset o at voxel v: 1 when v and v + o carry the same non-zero label (masked where v + o is
  outside the (sub)volume);
* ``cleft``: voxels of ``gt/clefts`` (> 0);
* ``pre`` / ``post``: voxels of the synapse's pre (post) object within ``pre_post_distance_nm`` of its cleft;
  with ``partner_zone_nm`` their loss counts only within that distance of a cleft (see :func:`partner_zone`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def affinity_targets(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(affinities, mask), both bool (len(offsets), z, y, x).

    ``aff[c, v]`` is True when ``labels[v] != 0`` and ``labels[v] == labels[v + offsets[c]]``;
    ``mask[c, v]`` is False where ``v + offsets[c]`` falls outside the array (no target there).
    """
    shape = labels.shape
    aff = np.zeros((len(offsets), *shape), dtype=bool)
    mask = np.zeros((len(offsets), *shape), dtype=bool)
    for c, o in enumerate(offsets):
        src, dst = [], []
        for d, n in zip(o, shape):
            d = int(d)
            if abs(d) >= n:
                src = None
                break
            # v in [max(0, -d), n - max(0, d)); neighbour v + d
            src.append(slice(max(0, -d), n - max(0, d)))
            dst.append(slice(max(0, -d) + d, n - max(0, d) + d))
        if src is None:
            continue
        a, b = labels[tuple(src)], labels[tuple(dst)]
        aff[c][tuple(src)] = (a != 0) & (a == b)
        mask[c][tuple(src)] = True
    return aff, mask


def synapse_targets(labels: np.ndarray, clefts: np.ndarray, synapses, voxel_size: Sequence[float],
                    distance_nm: float = 80.0, cleft_radius_nm: float = 0.0) -> np.ndarray:
    """bool (3, z, y, x): cleft, pre, post.

    ``cleft`` is the cleft voxels grown by ``cleft_radius_nm`` (Euclidean, anisotropic; 0: as labelled), a
    thicker target that tolerates a voxel of misplacement. ``synapses`` is a table (DataFrame or dict of columns)
    with ``id`` (cleft label), ``pre`` and ``post`` (label ids). ``pre`` marks voxels of the pre object within
    ``distance_nm`` of that synapse's (ungrown) cleft voxels; ``post`` likewise. Synapses missing from ``clefts``
    are skipped.
    """
    from scipy import ndimage

    out = np.zeros((3, *labels.shape), dtype=bool)
    out[0] = clefts > 0
    if cleft_radius_nm > 0 and out[0].any():
        reach = [int(cleft_radius_nm // v) for v in voxel_size]
        offsets = np.indices([2 * r + 1 for r in reach]).reshape(3, -1).T - reach
        ball = (np.linalg.norm(offsets * np.asarray(voxel_size, float), axis=1) <= cleft_radius_nm)
        out[0] = ndimage.binary_dilation(out[0], structure=ball.reshape([2 * r + 1 for r in reach]))
    if synapses is None or len(synapses["id"]) == 0 or not out[0].any():
        return out
    ids, inverse = np.unique(clefts, return_inverse=True)
    inverse = inverse.reshape(clefts.shape)
    boxes = ndimage.find_objects(inverse.astype(np.int32))  # box i-1 belongs to ids[i]
    row_of = {int(i): k for k, i in enumerate(ids)}
    grow = [int(math.ceil(distance_nm / v)) for v in voxel_size]
    for sid, pre, post in zip(synapses["id"], synapses["pre"], synapses["post"]):
        k = row_of.get(int(sid))
        if not k:  # absent or background
            continue
        box = boxes[k - 1]
        sl = tuple(slice(max(0, s.start - g), min(n, s.stop + g)) for s, g, n in zip(box, grow, labels.shape))
        cleft = inverse[sl] == k
        dist = ndimage.distance_transform_edt(~cleft, sampling=voxel_size)
        near = dist <= distance_nm
        lab = labels[sl]
        if int(pre):
            out[1][sl] |= near & (lab == pre)
        if int(post):
            out[2][sl] |= near & (lab == post)
    return out


def partner_zone(cleft: np.ndarray, voxel_size: Sequence[float], distance_nm: float) -> np.ndarray:
    """Voxels within ``distance_nm`` of a cleft voxel (bool, same shape; Euclidean, anisotropic).

    With ``partner_zone_nm`` the pre/post channels are trained and validated only there: they learn which side
    of a cleft is which (vesicles vs density), while finding clefts is the cleft channel's job."""
    from scipy import ndimage

    cleft = np.asarray(cleft, dtype=bool)
    if not cleft.any():
        return np.zeros(cleft.shape, dtype=bool)
    return ndimage.distance_transform_edt(~cleft, sampling=voxel_size) <= distance_nm
