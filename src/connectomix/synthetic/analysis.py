"""A small synthetic structure-function dataset following docs/data-contracts.md, for tests and demos.

Writes, under ``root``: ``gt/neurons.parquet``, ``gt/edges.parquet``, ``gt/functional/{rois.parquet,
responses.npy, stimuli.parquet, affine.json}`` (the phantom's ground truth) and a "reconstruction":
``neurons.parquet`` (other ids, jittered somata, morphology features), ``edges.parquet`` (some edges missed, some
false) and an empty ``synapses.parquet``. Connection probability falls with distance and, for excitatory pairs,
rises with orientation similarity (like-to-like).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def rotation(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """Rotation about z by ``yaw`` then about y by ``pitch`` (degrees)."""
    a, b = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return ry @ rz


def von_mises(theta_deg, pref_deg, kappa: float, amplitude: float = 1.0, baseline: float = 0.0) -> np.ndarray:
    """An orientation tuning curve (period 180 deg)."""
    d = np.deg2rad(2 * (np.asarray(theta_deg, float) - pref_deg))
    return baseline + amplitude * np.exp(kappa * (np.cos(d) - 1))


def make_dataset(root: str | Path, n_neurons: int = 80, seed: int = 0, box_um=(120, 120, 60), min_sep_um: float = 10,
                 roi_noise_um: float = 0.5, n_extra_rois: int = 10, like_to_like: float = 0.8,
                 missed_edges: float = 0.05, false_edges: float = 0.005) -> dict:
    """Write the dataset; returns the GT affine (4x4) and counts."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "gt" / "functional").mkdir(parents=True, exist_ok=True)
    pts: list[np.ndarray] = []
    while len(pts) < n_neurons:  # somata with a minimum separation
        p = rng.uniform(0, 1, 3) * np.array(box_um) * 1000
        if all(np.linalg.norm(p - q) > min_sep_um * 1000 for q in pts):
            pts.append(p)
    pos = np.array(pts)  # x, y, z nm
    exc = rng.random(n_neurons) < 0.8
    radius = np.where(exc, rng.normal(7500, 500, n_neurons), rng.normal(5000, 500, n_neurons))
    pref = rng.uniform(0, 180, n_neurons)
    imaged = rng.random(n_neurons) < 0.75
    ids = np.arange(1, n_neurons + 1, dtype=np.uint64) * 7
    gt_neurons = pd.DataFrame({
        "id": ids, "cell_class": np.where(exc, "excitatory", "inhibitory"), "soma_z_nm": pos[:, 2],
        "soma_y_nm": pos[:, 1], "soma_x_nm": pos[:, 0], "soma_radius_nm": radius, "pref_orientation_deg": pref,
        "tuning_width_deg": 25.0, "imaged": imaged,
    })
    # Connectivity: distance decay x (1 + like_to_like * cos(2 dtheta)) for E->E, unspecific otherwise.
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) / 1000
    dth = np.deg2rad(pref[:, None] - pref[None])
    spec = np.where(exc[:, None] & exc[None], 1 + like_to_like * np.cos(2 * dth), 1.0)
    p_conn = np.clip(np.where(exc[:, None], 0.25, 0.5) * np.exp(-d / 40) * spec, 0, 1)
    np.fill_diagonal(p_conn, 0)
    conn = rng.random(p_conn.shape) < p_conn
    pre, post = np.nonzero(conn)
    nsyn = 1 + rng.poisson(1.0, len(pre))
    gt_edges = pd.DataFrame({"pre": ids[pre], "post": ids[post], "n_synapses": nsyn})
    # Functional imaging.
    affine = np.eye(4)
    affine[:3, :3] = rotation(35, 8) @ np.diag([1.0e-3, 1.02e-3, 0.98e-3])
    affine[:3, 3] = [210.0, -40.0, 150.0]
    img = pos @ affine[:3, :3].T + affine[:3, 3]
    q = img[imaged] + rng.normal(0, roi_noise_um, (imaged.sum(), 3))
    lo, hi = img.min(0), img.max(0)
    extra = []
    while len(extra) < n_extra_rois:  # cells imaged outside the EM block: no partner
        c = rng.uniform(lo - 40, hi + 40)
        if np.linalg.norm(img - c, axis=1).min() > 15:
            extra.append(c)
    q = np.vstack([q, np.array(extra).reshape(-1, 3)])
    partner = np.concatenate([ids[imaged], np.zeros(n_extra_rois, np.uint64)])
    order = rng.permutation(len(q))
    rois = pd.DataFrame({"roi_id": np.arange(len(q)) + 100, "x_um": q[order, 0], "y_um": q[order, 1],
                         "z_um": q[order, 2], "neuron_id": partner[order]})
    theta = np.arange(0, 180, 22.5)
    n_trials = 10
    pref_roi = np.concatenate([pref[imaged], rng.uniform(0, 180, n_extra_rois)])[order]
    mean = np.stack([von_mises(theta, p, kappa=2.0, amplitude=1.0, baseline=0.1) for p in pref_roi])
    responses = mean[:, :, None] + rng.normal(0, 0.3, (len(q), len(theta), n_trials))
    stimuli = pd.DataFrame({"stimulus_id": np.arange(len(theta)), "orientation_deg": theta})
    fdir = root / "gt" / "functional"
    rois.to_parquet(fdir / "rois.parquet", index=False)
    np.save(fdir / "responses.npy", responses.astype(np.float32))
    stimuli.to_parquet(fdir / "stimuli.parquet", index=False)
    (fdir / "affine.json").write_text(json.dumps({"matrix": affine.tolist()}))
    gt_neurons.to_parquet(root / "gt" / "neurons.parquet", index=False)
    gt_edges.to_parquet(root / "gt" / "edges.parquet", index=False)
    # The "reconstruction": new ids, jittered somata, morphology features, imperfect edges.
    rid = ids + np.uint64(1000)
    jit = pos + rng.normal(0, 150, pos.shape)
    cable = np.where(exc, rng.normal(900, 150, n_neurons), rng.normal(600, 150, n_neurons))
    neurons = pd.DataFrame({
        "id": rid, "soma_z_nm": jit[:, 2], "soma_y_nm": jit[:, 1], "soma_x_nm": jit[:, 0],
        "soma_radius_nm": radius * rng.normal(1, 0.05, n_neurons),
        "volume": (4 / 3 * np.pi * radius**3) * rng.normal(1, 0.1, n_neurons) * 1e-9,
        "cable_length_um": cable, "branch_points": rng.poisson(np.where(exc, 30, 15)),
        "cell_type": "",
    })
    keep = rng.random(len(gt_edges)) >= missed_edges
    e = gt_edges[keep].assign(pre=lambda t: t["pre"] + np.uint64(1000), post=lambda t: t["post"] + np.uint64(1000))
    fp = np.nonzero((rng.random(conn.shape) < false_edges) & ~conn & ~np.eye(n_neurons, dtype=bool))
    e = pd.concat([e, pd.DataFrame({"pre": rid[fp[0]], "post": rid[fp[1]], "n_synapses": 1})], ignore_index=True)
    e["size"] = e["n_synapses"] * 100.0
    neurons.to_parquet(root / "neurons.parquet", index=False)
    e.to_parquet(root / "edges.parquet", index=False)
    pd.DataFrame({"id": pd.Series([], dtype=np.uint64), "pre": pd.Series([], dtype=np.uint64),
                  "post": pd.Series([], dtype=np.uint64)}).to_parquet(root / "synapses.parquet", index=False)
    return {"affine": affine, "n_rois": len(q), "n_edges": len(gt_edges)}
