"""Synthetic test volumes: label volumes (Voronoi cells, tubes) and degraded affinities computed from them.

For tests and benchmarks before (or besides) the phantom and the U-Net: affinities from ground truth, then blurred,
noised, with holes punched into boundaries (merge bait) and false boundaries inside objects (split bait).
"""

from __future__ import annotations

import numpy as np

from connectomix import io
from connectomix.provenance import DIGEST_ATTR, data_digest
from connectomix.segment.fragments import NN_OFFSETS


def voronoi_labels(shape, n_cells: int, seed: int = 0, anisotropy=(1.0, 1.0, 1.0), membrane: int = 1) -> np.ndarray:
    """Voronoi cells of ``n_cells`` random points (distances scaled by ``anisotropy``, e.g. voxel size); uint64
    labels 1..n, with 0 on in-plane cell borders ``membrane`` voxels thick (0: cells touch)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    pts = rng.uniform(0, 1, (n_cells, 3)) * np.array(shape)
    scale = np.asarray(anisotropy, float)
    grid = np.stack(np.meshgrid(*(np.arange(s) + 0.5 for s in shape), indexing="ij"), -1).reshape(-1, 3)
    _, idx = cKDTree(pts * scale).query(grid * scale)
    labels = (idx.reshape(shape) + 1).astype(np.uint64)
    if membrane > 0:
        border = np.zeros(shape, bool)
        for axis in (1, 2):
            diff = np.diff(labels, axis=axis) != 0
            lo = [slice(None)] * 3
            lo[axis] = slice(None, -1)
            border[tuple(lo)] |= diff
        if membrane > 1:
            from scipy import ndimage

            border = ndimage.binary_dilation(border, np.ones((1, 3, 3), bool), iterations=membrane - 1)
        labels[border] = 0
    return labels


def tube_labels(shape, n_tubes: int, radius: float, seed: int = 0) -> np.ndarray:
    """Straight tubes (neurite-like) through the volume along z with a random in-plane slope; 0 between them."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    out = np.zeros(shape, np.uint64)
    for i in range(n_tubes):
        y0, x0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[2])
        dy, dx = rng.uniform(-1, 1, 2) * 0.5
        d2 = (y - y0 - dy * z) ** 2 + (x - x0 - dx * z) ** 2
        out[(d2 < radius**2) & (out == 0)] = i + 1
    return out


def affinities_from_labels(labels: np.ndarray, offsets=NN_OFFSETS) -> np.ndarray:
    """Exact affinities (float32 0/1): 1 where v and v + offset carry the same non-zero label."""
    labels = np.asarray(labels)
    out = np.zeros((len(offsets),) + labels.shape, np.float32)
    for c, off in enumerate(offsets):
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        for d, o in enumerate(off):
            if o < 0:
                src[d], dst[d] = slice(-o, None), slice(None, o)
            elif o > 0:
                src[d], dst[d] = slice(None, -o), slice(o, None)
        a, b = labels[tuple(src)], labels[tuple(dst)]
        out[c][tuple(src)] = (a == b) & (a != 0)
    return out


def degrade(affs: np.ndarray, seed: int = 0, blur=(0.0, 1.0, 1.0), noise: float = 0.15, holes: int = 10,
            hole_radius: float = 2.0, false_boundaries: int = 10, false_radius: float = 4.0) -> np.ndarray:
    """Blur (sigma (z, y, x), voxels), add Gaussian noise, punch ``holes`` (balls where boundaries read 0.9: merge bait)
    and paint ``false_boundaries`` (discs of low affinity inside objects: split bait); uint8 value/255."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.stack([ndimage.gaussian_filter(a, blur) for a in affs]) if np.any(blur) else affs.copy()
    shape = affs.shape[1:]
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")

    def ball(r):
        c = [rng.uniform(0, s) for s in shape]
        return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r**2

    for _ in range(holes):
        m = ball(hole_radius)
        out[:, m] = np.maximum(out[:, m], 0.9)
    for _ in range(false_boundaries):
        m = ball(false_radius)
        out[:, m] = np.minimum(out[:, m], rng.uniform(0.1, 0.4))
    out = out + rng.normal(0, noise, out.shape).astype(np.float32)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def write_test_volume(root, affs_u8: np.ndarray, voxel_size=(40, 8, 8), chunks=(8, 32, 32), offsets=NN_OFFSETS,
                      gt: np.ndarray | None = None) -> None:
    """Write ``affinities`` (and ``gt/labels``) into an OME-Zarr the way the predict stage / phantom do, content
    checksums included (readers record them instead of hashing the arrays again)."""
    names = [f"aff_{'_'.join(str(v) for v in o)}" for o in offsets]
    io.write_full(root, "affinities", affs_u8, (len(offsets),) + tuple(chunks), voxel_size, channels=names,
                  attrs={"offsets": [list(o) for o in offsets], "scale": 1 / 255, DIGEST_ATTR: data_digest(affs_u8)})
    if gt is not None:
        gt = gt.astype(np.uint64)
        io.write_full(root, "gt/labels", gt, chunks, voxel_size, is_label=True, attrs={DIGEST_ATTR: data_digest(gt)})
