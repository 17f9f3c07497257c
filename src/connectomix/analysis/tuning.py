"""Orientation tuning of two-photon ROIs: preferred orientation, OSI, reliability, signal correlation.

Responses are (roi, stimulus, trial). Stimuli with a NaN orientation (blanks) are left out of the orientation
metrics. Orientations are taken modulo 180 degrees (directions 0 and 180 are the same orientation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def orientation_curves(responses: np.ndarray, orientation_deg) -> tuple[np.ndarray, np.ndarray]:
    """Trial-averaged responses per orientation: ``(curves (roi, n_orientations), orientations_deg)``.

    Stimuli sharing an orientation (mod 180) are averaged; blanks (NaN) are dropped.
    """
    ori = np.asarray(orientation_deg, float)
    keep = np.isfinite(ori)
    mean = np.asarray(responses, float)[:, keep].mean(axis=2)
    ori = np.mod(ori[keep], 180.0)
    uniq = np.unique(np.round(ori, 6))
    curves = np.stack([mean[:, np.isclose(ori, u)].mean(axis=1) for u in uniq], axis=1)
    return curves, uniq


def preferred_orientation_osi(curves: np.ndarray, orientations_deg) -> tuple[np.ndarray, np.ndarray]:
    """Vector average on doubled angles: ``pref_deg`` in [0, 180) and the global OSI in [0, 1].

    With ``r`` the rectified (>= 0) tuning curve, ``z = sum r exp(2i theta) / sum r``; ``pref = arg(z) / 2`` and
    ``OSI = |z|`` (1 - circular variance). A flat curve gives OSI 0 (evenly spaced orientations), a single-orientation
    response OSI 1. A curve with no positive response gives pref NaN and OSI 0.
    """
    r = np.clip(np.atleast_2d(curves), 0, None)
    theta = np.deg2rad(np.asarray(orientations_deg, float))
    total = r.sum(axis=1)
    z = (r * np.exp(2j * theta)).sum(axis=1) / np.where(total > 0, total, 1)
    pref = np.where(total > 0, np.mod(np.rad2deg(np.angle(z)) / 2, 180.0), np.nan)
    return pref, np.where(total > 0, np.abs(z), 0.0)


def split_half_reliability(responses: np.ndarray, repeats: int = 20, seed: int = 0) -> np.ndarray:
    """Split-half reliability per ROI: mean over ``repeats`` random trial splits of the Pearson correlation between
    the two halves' stimulus-response curves, Spearman-Brown corrected (``2r / (1 + r)``). NaN with < 2 trials."""
    responses = np.asarray(responses, float)
    n_roi, _, n_trial = responses.shape
    if n_trial < 2:
        return np.full(n_roi, np.nan)
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(repeats):
        perm = rng.permutation(n_trial)
        a = responses[:, :, perm[: n_trial // 2]].mean(axis=2)
        b = responses[:, :, perm[n_trial // 2:]].mean(axis=2)
        rs.append(_rowwise_corr(a, b))
    r = np.nanmean(np.stack(rs), axis=0)
    return 2 * r / (1 + r)


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / den, np.nan)


def signal_correlation(responses: np.ndarray) -> np.ndarray:
    """(roi, roi) Pearson correlation of trial-averaged stimulus-response curves (all stimuli)."""
    mean = np.asarray(responses, float).mean(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(mean)


def orientation_difference(pref_a, pref_b) -> np.ndarray:
    """Absolute difference of orientations in degrees, in [0, 90]."""
    d = np.abs(np.mod(np.asarray(pref_a, float) - np.asarray(pref_b, float), 180.0))
    return np.minimum(d, 180.0 - d)


def tuning_table(rois: pd.DataFrame, responses: np.ndarray, stimuli: pd.DataFrame, repeats: int = 20,
                 seed: int = 0) -> pd.DataFrame:
    """Per ROI: ``roi_id``, ``pref_orientation_deg``, ``osi``, ``reliability``, ``peak_response``."""
    curves, ori = orientation_curves(responses, stimuli["orientation_deg"].to_numpy(float))
    pref, osi = preferred_orientation_osi(curves, ori)
    return pd.DataFrame({
        "roi_id": rois["roi_id"].to_numpy(np.int64),
        "pref_orientation_deg": pref,
        "osi": osi,
        "reliability": split_half_reliability(responses, repeats, seed),
        "peak_response": curves.max(axis=1),
    })
