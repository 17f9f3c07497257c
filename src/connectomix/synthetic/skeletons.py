"""Synthetic dense label volumes for tests and benchmarks: branching tubes with a soma, neighbours touching.

Only for exercising the skeleton stage before (or besides) the phantom; the phantom is the real ground truth.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _paint_capsule(labels, label, p0, p1, radius_nm, voxel_size):
    """Paint voxels within ``radius_nm`` of the segment p0-p1 (positions in nm, (z, y, x))."""
    vs = np.asarray(voxel_size, np.float64)
    lo = np.floor((np.minimum(p0, p1) - radius_nm) / vs).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + radius_nm) / vs).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, labels.shape)
    if np.any(hi <= lo):
        return
    grids = np.meshgrid(*[np.arange(a, b) * v for a, b, v in zip(lo, hi, vs)], indexing="ij")
    pts = np.stack(grids, axis=-1)
    d = p1 - p0
    t = np.clip(((pts - p0) @ d) / max(float(d @ d), 1e-9), 0, 1)
    dist = np.linalg.norm(pts - (p0 + t[..., None] * d), axis=-1)
    view = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    view[dist <= radius_nm] = label


def synthetic_neurons(
    shape: Sequence[int] = (16, 128, 128),
    voxel_size: Sequence[float] = (40, 8, 8),
    n_neurons: int = 4,
    seed: int = 0,
    soma_radius_nm: tuple[float, float] = (200.0, 260.0),
    neurite_radius_nm: tuple[float, float] = (50.0, 90.0),
    branches: int = 3,
    first_label: int = 1,
) -> tuple[np.ndarray, list[dict]]:
    """A uint64 (z, y, x) volume of ``n_neurons`` neurons: a soma sphere, thick primary neurites that branch
    into thinner ones, drawn in label order so that later neurons cut through (touch) earlier ones; somata are drawn last
    and stay whole.

    Returns ``(labels, neurons)``; ``neurons`` lists ``id``, ``soma_nm`` (z, y, x) and ``soma_radius_nm``.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(tuple(shape), np.uint64)
    extent = np.asarray(shape, np.float64) * np.asarray(voxel_size, np.float64)
    neurons = []
    for k in range(n_neurons):
        label = first_label + k
        soma = rng.uniform(0.2, 0.8, 3) * extent
        r_soma = rng.uniform(*soma_radius_nm)
        stack = []
        for _ in range(rng.integers(2, 4)):
            direction = rng.normal(size=3) * np.array([0.15, 1, 1])
            stack.append((soma, direction / np.linalg.norm(direction), rng.uniform(*neurite_radius_nm), branches))
        while stack:
            start, direction, radius, depth = stack.pop()
            length = rng.uniform(0.25, 0.5) * extent[1:].mean()
            n_steps = 4
            p = start
            for _ in range(n_steps):
                direction = direction + rng.normal(scale=0.25, size=3) * np.array([0.1, 1, 1])
                direction /= np.linalg.norm(direction)
                q = p + direction * length / n_steps
                q[0] = np.clip(q[0], 0.5 * voxel_size[0], extent[0] - 0.5 * voxel_size[0])  # stay in the slab
                _paint_capsule(labels, label, p, q, radius, voxel_size)
                p = q
                if np.any(p < 0) or np.any(p >= extent):
                    break
            if depth > 0 and np.all((p >= 0) & (p < extent)):
                for sign in (-1, 1):
                    turn = np.cross(direction, [1.0, 0, 0]) * sign * rng.uniform(0.5, 1.0)
                    d2 = direction + turn
                    stack.append((p, d2 / np.linalg.norm(d2), max(radius * 0.8, 32.0), depth - 1))
        neurons.append({"id": label, "soma_nm": soma.tolist(), "soma_radius_nm": r_soma})
    for n in neurons:  # somata last, so each is whole
        _paint_capsule(labels, n["id"], np.asarray(n["soma_nm"]), np.asarray(n["soma_nm"]), n["soma_radius_nm"],
                       voxel_size)
    return labels, neurons


def tiled_labels(tile: np.ndarray, reps: Sequence[int]) -> np.ndarray:
    """Tile a label volume ``reps`` times along (z, y, x), giving each copy its own ids (for large benchmarks)."""
    out = np.tile(tile, tuple(reps))
    span = int(tile.max()) + 1
    zi, yi, xi = [np.repeat(np.arange(r), s) for r, s in zip(reps, tile.shape)]
    copy_index = (zi[:, None, None] * reps[1] + yi[None, :, None]) * reps[2] + xi[None, None, :]
    return np.where(out > 0, out + copy_index.astype(np.uint64) * np.uint64(span), 0).astype(np.uint64)
