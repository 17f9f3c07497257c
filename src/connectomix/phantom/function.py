"""Function: orientation tuning, calcium-like responses, and a two-photon ROI table in its own frame."""

from __future__ import annotations

import numpy as np
import pandas as pd


def tuning(rng, n: int):
    """Preferred orientation (deg, 0-180) and tuning width (deg, half-width at half maximum) per neuron."""
    pref = rng.uniform(0, 180, n)
    width = rng.uniform(15, 40, n)
    return pref, width


def imaging_affine(rng) -> np.ndarray:
    """A known EM (x, y, z, 1) nm -> imaging (x, y, z) µm affine: rotation, ~1e-3 µm/nm scale, translation."""
    angle = rng.uniform(-np.pi, np.pi)
    tilt = rng.normal(0, 0.05, 2)
    cz, sz = np.cos(angle), np.sin(angle)
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(tilt[0]), -np.sin(tilt[0])], [0, np.sin(tilt[0]), np.cos(tilt[0])]])
    rot_y = np.array([[np.cos(tilt[1]), 0, np.sin(tilt[1])], [0, 1, 0], [-np.sin(tilt[1]), 0, np.cos(tilt[1])]])
    scale = 1e-3 * rng.uniform(0.95, 1.05, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = rot_z @ rot_x @ rot_y @ np.diag(scale)
    matrix[:3, 3] = rng.uniform(-200, 200, 3)
    return matrix


def responses(rng, pref, width, n_orientations, n_trials, noise):
    """Calcium-like responses (roi x stimulus x trial): von Mises tuning on doubled angles, gamma-ish noise."""
    stimuli = np.arange(n_orientations) * 180.0 / n_orientations
    kappa = np.log(2) / (1 - np.cos(2 * np.deg2rad(width)))  # half maximum at +-width
    delta = np.deg2rad(stimuli[None, :] - pref[:, None])
    mean = 0.1 + np.exp(kappa[:, None] * (np.cos(2 * delta) - 1))
    amplitude = rng.uniform(0.6, 1.4, len(pref))[:, None]
    trials = amplitude[..., None] * mean[..., None] * rng.gamma(8.0, 1 / 8.0, (len(pref), n_orientations, n_trials))
    trials += rng.normal(0, noise, trials.shape)
    return stimuli, trials.astype(np.float32)


def roi_table(rng, neurons: pd.DataFrame, affine, imaged_fraction, extra_rois, jitter_um, extent_nm):
    """ROIs in the imaging frame for a subset of neurons plus ROIs with no EM partner (neuron_id 0).

    Returns the ROI table (shuffled ROI ids) and, per ROI, the index of its neuron (-1 for none).
    """
    n = len(neurons)
    imaged = rng.random(n) < imaged_fraction
    if imaged.sum() == n and n > 1:
        imaged[rng.integers(n)] = False  # at least one neuron is never imaged
    soma_xyz = neurons[["soma_x_nm", "soma_y_nm", "soma_z_nm"]].to_numpy()
    points = [soma_xyz[i] for i in np.flatnonzero(imaged)]
    partner = [int(i) for i in np.flatnonzero(imaged)]
    extent_xyz = np.asarray(extent_nm)[::-1]
    min_gap = 400.0
    for _ in range(extra_rois):
        for _attempt in range(1000):
            p = rng.random(3) * extent_xyz
            if np.min(np.linalg.norm(soma_xyz - p, axis=1)) > min_gap:
                points.append(p)
                partner.append(-1)
                break
    points = np.array(points)
    um = (affine[:3, :3] @ points.T).T + affine[:3, 3] + rng.normal(0, jitter_um, points.shape)
    order = rng.permutation(len(points))
    ids = neurons["id"].to_numpy()
    table = pd.DataFrame({
        "roi_id": np.arange(len(points), dtype=np.int64),
        "x_um": um[order, 0], "y_um": um[order, 1], "z_um": um[order, 2],
        "neuron_id": np.array([ids[partner[i]] if partner[i] >= 0 else 0 for i in order], dtype=np.uint64),
    })
    return table, imaged, np.array([partner[i] for i in order])
