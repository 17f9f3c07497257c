"""A tiny synthetic training volume (Voronoi cells, dark borders, a few clefts) for tests and smoke runs."""

from __future__ import annotations

import numpy as np

from connectomix.evaluate.boundaries import gt_boundaries
from connectomix.train.data import TrainData
from connectomix.train.targets import synapse_targets


def synthetic_data(shape=(16, 64, 64), seed: int = 0, cells: int = 12, voxel_size=(40, 8, 8),
                   synapses: int = 6) -> tuple[TrainData, dict]:
    """A tiny Voronoi volume for tests and smoke runs: dark 1-voxel borders, noisy grey cells, a few clefts.

    Returns (TrainData with synapse targets, dict with ``labels``, ``clefts`` and the synapse table).
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    size = np.array(shape) * np.array(voxel_size)
    seeds = rng.uniform(0, 1, size=(cells, 3)) * size
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * v for n, v in zip(shape, voxel_size)], indexing="ij"), -1)
    _, nearest = cKDTree(seeds).query(grid.reshape(-1, 3))
    labels = (nearest.reshape(shape) + 1).astype(np.uint64)
    border = gt_boundaries(labels) & ~np.pad(np.diff(labels, axis=2) == 0, ((0, 0), (0, 0), (0, 1)),
                                              constant_values=True)
    raw = 150 + rng.normal(0, 12, size=shape) + rng.uniform(-20, 20, size=cells + 1)[labels.astype(int)]
    raw[border] = 60
    raw = np.clip(raw, 0, 255).astype(np.uint8)
    clefts = np.zeros(shape, dtype=np.uint64)
    rows = {"id": [], "pre": [], "post": []}
    xb = np.argwhere(border)
    for sid in range(1, synapses + 1):
        if not len(xb):
            break
        z, y, x = xb[rng.integers(len(xb))]
        pre = labels[z, y, x]
        post = labels[z, y, min(x + 1, shape[2] - 1)]
        if pre == post:
            continue
        patch = (slice(max(0, z - 1), z + 2), slice(max(0, y - 3), y + 4), slice(x, x + 1))
        clefts[patch] = np.where(border[patch], sid, clefts[patch])
        rows["id"].append(sid)
        rows["pre"].append(int(pre))
        rows["post"].append(int(post))
    table = {k: np.array(v, dtype=np.uint64) for k, v in rows.items()}
    syn = synapse_targets(labels, clefts, table, voxel_size, 40.0)
    data = TrainData(raw, labels, tuple(voxel_size), syn, (True, True, True), {"synthetic": True, "seed": seed})
    return data, {"labels": labels, "clefts": clefts, "synapses": table}
