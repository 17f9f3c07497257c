"""Clefts from the cleft channel: threshold, connected components per block with provisional ids
(:func:`cleft_id`), and the face merge of the pieces across blocks (:func:`face_pairs`, :func:`merge_pieces`)."""

from __future__ import annotations

import cc3d
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

STATS_COLUMNS = ["prov_id", "voxels", "sum_z", "sum_y", "sum_x", "sum_prob"]


def probability(values: np.ndarray) -> np.ndarray:
    """uint8 maps (value/255) or float maps as float32 probabilities."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255)
    return values.astype(np.float32, copy=False)


# --- per block: threshold + connected components -- ------------------------------------------------------------


def threshold_cleft(cleft_read: np.ndarray, voxel_size, params: dict) -> np.ndarray:
    """Boolean cleft mask of a read ROI: optional Gaussian smoothing (sigma in nm), then ``> threshold``."""
    prob = probability(cleft_read)
    sigma = params["smooth_sigma_nm"]
    if sigma > 0:
        prob = ndimage.gaussian_filter(prob, [sigma / v for v in voxel_size], mode="nearest")
    return prob > params["threshold"]


COORD_BITS = 21  # per axis: volumes up to 2,097,152 voxels along each axis


def cleft_id(zyx) -> np.ndarray:
    """Cleft id of a global voxel (z, y, x), or of arrays of them: ``1 + (z << 42 | y << 21 | x)``. The packing keeps
    C order (the lowest voxel has the smallest id), stays below 2**63, and does not depend on the volume's shape."""
    z, y, x = (np.asarray(c, dtype=np.uint64) for c in zyx)
    if max(int(np.max(c, initial=0)) for c in (z, y, x)) >= 1 << COORD_BITS:
        raise ValueError(f"voxel coordinates must be below {1 << COORD_BITS} per axis for cleft ids")
    bits = np.uint64(COORD_BITS)
    return ((z << bits | y) << bits | x) + np.uint64(1)


def cleft_voxel(ids) -> np.ndarray:
    """The global voxels (rows z, y, x) that :func:`cleft_id` values pack."""
    v = np.asarray(ids, dtype=np.uint64).reshape(-1) - np.uint64(1)
    mask, bits = np.uint64((1 << COORD_BITS) - 1), np.uint64(COORD_BITS)
    return np.stack([v >> (bits + bits), (v >> bits) & mask, v & mask], axis=1)


def label_block(mask: np.ndarray, prob: np.ndarray, write_offset, params: dict, inner_faces=((True, True),) * 3):
    """Connected components of one block's write-ROI mask with provisional global ids.

    ``inner_faces[axis] = (low, high)`` says which faces border another block. Returns ``(labels, stats)``:
    uint64 labels (0 = background; id = :func:`cleft_id` of the piece's first voxel) and a DataFrame
    with ``prov_id, voxels, sum_z, sum_y, sum_x`` (global voxel coordinates) and ``sum_prob``.
    """
    local = cc3d.connected_components(mask, connectivity=params["connectivity"], out_dtype=np.uint32)
    n = int(local.max())
    if n == 0:
        empty = {c: np.zeros(0, np.float64) for c in STATS_COLUMNS}
        empty.update(prov_id=np.zeros(0, np.uint64), voxels=np.zeros(0, np.int64))
        return np.zeros(mask.shape, np.uint64), pd.DataFrame(empty)
    flat = local.ravel()
    # cc3d numbers components in order of first appearance (C order), so a sorted unique gives first indices.
    _, first = np.unique(flat, return_index=True)
    first = first[1:]  # drop background
    coords = np.unravel_index(first, mask.shape)
    gcoords = tuple(c + o for c, o in zip(coords, write_offset))
    prov = cleft_id(gcoords)
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = []
    for axis in range(3):
        coord = np.arange(mask.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]) + write_offset[axis]
        sums.append(np.bincount(flat, weights=np.broadcast_to(coord, mask.shape).ravel(), minlength=n + 1)[1:])
    sum_prob = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n + 1)[1:]
    # Pieces touching an inner face may continue in the next block: keep them whatever their size.
    touching = np.zeros(n + 1, bool)
    for axis in range(3):
        for side, inner in zip((0, -1), inner_faces[axis]):
            if inner:
                face = np.take(local, side, axis=axis)
                touching[np.unique(face)] = True
    keep = (counts >= params["min_size_voxels"]) | touching[1:]
    lut = np.zeros(n + 1, np.uint64)
    lut[1:][keep] = prov[keep]
    labels = lut[local]
    stats = pd.DataFrame({"prov_id": prov[keep], "voxels": counts[keep].astype(np.int64), "sum_z": sums[0][keep],
                          "sum_y": sums[1][keep], "sum_x": sums[2][keep], "sum_prob": sum_prob[keep]})
    return labels, stats


# --- stitching ---------------------------------------------------------------------------------------------------


def _face_shifts(connectivity: int) -> list[tuple[int, int]]:
    """In-plane shifts (du, dv) between a voxel and its neighbours in the next plane."""
    shifts = [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)]
    limit = {6: 0, 18: 1, 26: 2}[connectivity]
    return [(du, dv) for du, dv in shifts if abs(du) + abs(dv) <= limit]


def face_pairs(read, grid, block, axis: int, connectivity: int) -> np.ndarray:
    """Pairs (id_low, id_high) of labels touching across ``block``'s high face on ``axis``.

    ``read(slices)`` returns the label array for a tuple of slices (global voxels). The low plane is the block's
    last plane restricted to its write ROI; the high plane (first plane of the next block) is grown by one voxel
    in-plane, so diagonal contacts with blocks that share only an edge or a corner are found too.
    """
    c = block.write.end[axis]
    others = [a for a in range(3) if a != axis]
    lo_sl = [slice(o, e) for o, e in zip(block.write.offset, block.write.end)]
    lo_sl[axis] = slice(c - 1, c)
    hi_sl = list(lo_sl)
    hi_sl[axis] = slice(c, c + 1)
    for a in others:
        hi_sl[a] = slice(max(0, block.write.offset[a] - 1), min(grid.volume_shape[a], block.write.end[a] + 1))
    lo = np.squeeze(np.asarray(read(tuple(lo_sl))), axis=axis)
    hi = np.squeeze(np.asarray(read(tuple(hi_sl))), axis=axis)
    # Pad the high plane so hi_pad[1 + u, 1 + v] lies opposite lo[u, v].
    nu, nv = lo.shape
    hi_pad = np.zeros((nu + 2, nv + 2), hi.dtype)
    u0 = 1 - (block.write.offset[others[0]] - hi_sl[others[0]].start)
    v0 = 1 - (block.write.offset[others[1]] - hi_sl[others[1]].start)
    hi_pad[u0:u0 + hi.shape[0], v0:v0 + hi.shape[1]] = hi
    pairs = []
    for du, dv in _face_shifts(connectivity):
        h = hi_pad[1 + du:1 + du + nu, 1 + dv:1 + dv + nv]
        both = (lo > 0) & (h > 0)
        if both.any():
            pairs.append(np.stack([lo[both], h[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.uint64)
    return np.unique(np.concatenate(pairs).astype(np.uint64), axis=0)


def merge_pieces(stats, pairs: np.ndarray, voxel_size, offset_nm, min_size: int):
    """Union-find over touching pieces. Returns ``(mapping, clefts)``.

    ``mapping``: DataFrame ``prov_id -> id`` (0 where the merged cleft is smaller than ``min_size``);
    ``clefts``: one row per kept cleft: ``id`` (= smallest provisional id = ``cleft_id`` of its lowest voxel),
    ``voxels``, ``cleft_prob`` (mean), centre of mass ``ctr_z``, ``ctr_y``, ``ctr_x`` (voxels) and ``_nm``.
    """
    stats = stats.sort_values("prov_id").reset_index(drop=True)
    ids = stats["prov_id"].to_numpy(np.uint64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate provisional cleft ids across blocks (blocks written by different setups?)")
    n = len(ids)
    if len(pairs):
        a = np.searchsorted(ids, pairs[:, 0])
        b = np.searchsorted(ids, pairs[:, 1])
        ok = (a < n) & (b < n)
        ok[ok] &= (ids[a[ok]] == pairs[ok, 0]) & (ids[b[ok]] == pairs[ok, 1])
        if not ok.all():
            raise ValueError("a face pair names a cleft piece missing from the block statistics")
        graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    else:
        graph = coo_matrix((n, n))
    _, comp = connected_components(graph, directed=False)
    stats = stats.assign(comp=comp)
    agg = stats.groupby("comp", sort=False).agg(
        id=("prov_id", "min"), voxels=("voxels", "sum"), sum_z=("sum_z", "sum"), sum_y=("sum_y", "sum"),
        sum_x=("sum_x", "sum"), sum_prob=("sum_prob", "sum"))
    agg["keep"] = agg["voxels"] >= min_size
    final = stats["comp"].map(agg["id"].where(agg["keep"], 0)).to_numpy(np.uint64)
    mapping = pd.DataFrame({"prov_id": ids, "id": final})
    kept = agg[agg["keep"]].sort_values("id").reset_index(drop=True)
    clefts = pd.DataFrame({"id": kept["id"].to_numpy(np.uint64), "voxels": kept["voxels"].astype(np.int64),
                           "cleft_prob": kept["sum_prob"] / kept["voxels"]})
    for a, axis in enumerate("zyx"):
        clefts[f"ctr_{axis}"] = kept[f"sum_{axis}"] / kept["voxels"]
        clefts[f"ctr_{axis}_nm"] = offset_nm[a] + clefts[f"ctr_{axis}"] * voxel_size[a]
    return mapping, clefts


def remap(labels: np.ndarray, mapping) -> np.ndarray:
    """Provisional -> final ids (ids not in ``mapping``, e.g. dropped small pieces, become 0)."""
    keys = mapping["prov_id"].to_numpy(np.uint64)
    vals = mapping["id"].to_numpy(np.uint64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    flat = labels.ravel()
    pos = np.searchsorted(keys, flat)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    if len(keys) == 0:
        return np.zeros_like(labels)
    hit = keys[pos] == flat
    return np.where(hit, vals[pos], 0).astype(np.uint64).reshape(labels.shape)
