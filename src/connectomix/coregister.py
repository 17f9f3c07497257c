"""Co-registration: match two-photon ROIs to EM somata.

Functional input format (``load_functional``)
---------------------------------------------
* ROI table (Parquet or CSV): ``roi_id`` (int, unique), ``x_um``, ``y_um``, ``z_um`` (ROI centre in the imaging
  frame, µm; ``x``, ``y``, ``z`` are accepted as aliases). Any other column is ignored; in particular the phantom's
  ground-truth ``neuron_id`` is never read here.
* Responses (``.npy``): float array (roi, stimulus, trial), rows in ROI-table order, no NaN/inf.
* Stimulus table (Parquet or CSV): ``stimulus_id`` (unique), ``orientation_deg`` (NaN marks a blank), rows in the
  order of the responses' stimulus axis.
* Or one NWB file (``.nwb``, pynwb) holding all three (:func:`read_nwb`, written by :func:`write_nwb`; the phantom
  writes ``gt/functional/functional.nwb``): the ROIs of the ``ophys`` module's ``ImageSegmentation``
  (a ``PlaneSegmentation``), one ``RoiResponseSeries`` (time = stimulus presentations, one row each) and the
  ``trials`` table, one row per presentation in the same order, with ``stimulus_id`` and ``orientation_deg``
  columns. ROI centres come from ``x_um``/``y_um``/``z_um`` columns when present, else from the weighted centroid
  of each ROI's ``voxel_mask`` (or ``pixel_mask``, z 0) through the imaging plane's ``origin_coords`` and
  ``grid_spacing`` (µm); ROI ids from a ``roi_id`` column, else the table's ids.

Transform
---------
An affine ``M`` (4x4) maps EM (x, y, z, 1) in nm to imaging (x, y, z) in µm, as the phantom's ``affine.json``.
With landmark pairs (config ``coregister.landmarks``) it is a least-squares fit. Without, correspondences are unknown:
RANSAC draws ROI triangles, finds soma triangles of matching side lengths (similarity with a scale prior), scores each
hypothesis by how many ROIs land next to a soma (MSAC), and trimmed ICP refines the winner to a full affine.

Assignment
----------
An integer linear program (pulp, CBC): binary ``x[r, s]`` for ROI/soma pairs within the gate and ``u[r]`` for
"ROI unmatched"; minimise ``sum d[r, s] x[r, s] + C sum u[r]`` subject to ``sum_s x[r, s] + u[r] = 1`` (each ROI
matched once or left unmatched) and ``sum_r x[r, s] <= 1`` (at most one ROI per soma).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scipy.spatial import cKDTree

from connectomix import config

ROI_COLUMNS = ("roi_id", "x_um", "y_um", "z_um")
_ROI_ALIASES = {"x": "x_um", "y": "y_um", "z": "z_um"}
SOMA_COLUMNS = ("soma_x_nm", "soma_y_nm", "soma_z_nm")  # (x, y, z): the order of the affine


# ----------------------------------------------------------------------------------------------------------------
# Input


def read_table(path: str | Path) -> pd.DataFrame:
    """A Parquet (``.parquet``/``.pq``) or CSV (``.csv``/``.tsv``) table; a ValueError for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise ValueError(f"{path}: unsupported table format {suffix!r} (expected .parquet or .csv)")


def load_rois(path: str | Path) -> pd.DataFrame:
    """The ROI table (``roi_id``, ``x_um``, ``y_um``, ``z_um``), validated; other columns are dropped."""
    table = read_table(path)
    table = table.rename(columns={k: v for k, v in _ROI_ALIASES.items() if k in table and v not in table})
    missing = [c for c in ROI_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{path}: ROI table lacks column(s) {missing} (needs {list(ROI_COLUMNS)})")
    table = table[list(ROI_COLUMNS)].copy()
    if table["roi_id"].duplicated().any():
        dup = table.loc[table["roi_id"].duplicated(), "roi_id"].tolist()[:5]
        raise ValueError(f"{path}: duplicated roi_id values {dup}")
    pos = table[list(ROI_COLUMNS[1:])].to_numpy(float)
    if not np.isfinite(pos).all():
        raise ValueError(f"{path}: ROI positions contain NaN or inf")
    table["roi_id"] = table["roi_id"].astype(np.int64)
    return table.reset_index(drop=True)


def load_stimuli(path: str | Path) -> pd.DataFrame:
    """The stimulus table (``stimulus_id``, ``orientation_deg``), validated."""
    table = read_table(path)
    missing = [c for c in ("stimulus_id", "orientation_deg") if c not in table]
    if missing:
        raise ValueError(f"{path}: stimulus table lacks column(s) {missing}")
    if table["stimulus_id"].duplicated().any():
        raise ValueError(f"{path}: duplicated stimulus_id values")
    return table.reset_index(drop=True)


def load_functional(rois: str | Path, responses: str | Path | None = None, stimuli: str | Path | None = None):
    """``(rois, responses, stimuli)``: the ROI table, the (roi, stimulus, trial) array and the stimulus table, from
    three files or from one NWB file (``rois`` ending in .nwb; ``responses`` and ``stimuli`` then name the same
    file or are None).

    Raises ValueError naming the file for missing columns, duplicated ids, NaN responses and shape mismatches.
    """
    if Path(rois).suffix.lower() == ".nwb":
        others = {str(Path(f)) for f in (responses, stimuli) if f is not None} - {str(Path(rois))}
        if others:
            raise ValueError(f"{rois} is an NWB file holding responses and stimuli too; got other files {sorted(others)}")
        return read_nwb(rois)
    if responses is None or stimuli is None:
        raise ValueError(f"{rois}: a ROI table needs its responses (.npy) and stimulus table files as well")
    roi_table = load_rois(rois)
    stim_table = load_stimuli(stimuli)
    path = Path(responses)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: responses must be a .npy array (roi, stimulus, trial)")
    return roi_table, _checked_responses(np.load(path, allow_pickle=False), path, roi_table, stim_table, rois,
                                         stimuli), stim_table


def _checked_responses(array, path, roi_table, stim_table, rois, stimuli) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{path}: responses must have 3 axes (roi, stimulus, trial), got shape {array.shape}")
    if array.shape[0] != len(roi_table):
        raise ValueError(f"{path}: {array.shape[0]} response rows but {len(roi_table)} ROIs in {rois}")
    if array.shape[1] != len(stim_table):
        raise ValueError(f"{path}: {array.shape[1]} stimuli in responses but {len(stim_table)} rows in {stimuli}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: responses contain NaN or inf ({int((~np.isfinite(array)).sum())} values)")
    return array.astype(np.float64)


def write_nwb(path: str | Path, rois: pd.DataFrame, responses: np.ndarray, stimuli: pd.DataFrame,
              description: str = "two-photon functional imaging", grid_spacing_um: float = 0.01) -> None:
    """Functional data as NWB (see the module docstring): ROIs (ids, centres as columns and as one-voxel masks on a
    ``grid_spacing_um`` grid), responses as presentations (trial-major: every stimulus once, then again) and the
    trials table. Written to a temporary file and renamed, so a killed job leaves no partial file."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel

    path = Path(path)
    rois = rois[list(ROI_COLUMNS)].reset_index(drop=True)
    n_roi, n_stim, n_trial = responses.shape
    nwb = NWBFile(session_description=description, identifier=path.stem,
                  session_start_time=datetime(2000, 1, 1, tzinfo=timezone.utc))
    device = nwb.create_device(name="microscope", description="two-photon microscope")
    centres = rois[["x_um", "y_um", "z_um"]].to_numpy(float)
    origin = centres.min(axis=0) if len(centres) else np.zeros(3)
    plane = nwb.create_imaging_plane(
        name="volume", optical_channel=OpticalChannel(name="green", description="calcium indicator",
                                                      emission_lambda=510.0),
        description="imaged volume; ROI positions in micrometres", device=device, excitation_lambda=920.0,
        indicator="calcium indicator", location="cortex", origin_coords=origin.tolist(),
        origin_coords_unit="micrometers", grid_spacing=[grid_spacing_um] * 3, grid_spacing_unit="micrometers")
    module = nwb.create_processing_module(name="ophys", description="ROIs and their responses")
    segmentation = ImageSegmentation()
    module.add(segmentation)
    table = segmentation.create_plane_segmentation(name="PlaneSegmentation", description="ROIs",
                                                   imaging_plane=plane)
    for column, text in (("roi_id", "ROI id"), ("x_um", "ROI centre x, micrometres"),
                         ("y_um", "ROI centre y, micrometres"), ("z_um", "ROI centre z, micrometres")):
        table.add_column(name=column, description=text)
    for row, centre in zip(rois.itertuples(index=False), centres):
        index = np.rint((centre - origin) / grid_spacing_um).astype(np.uint32)
        table.add_roi(voxel_mask=[(int(index[0]), int(index[1]), int(index[2]), 1.0)], roi_id=int(row.roi_id),
                      x_um=float(row.x_um), y_um=float(row.y_um), z_um=float(row.z_um))
    data = np.transpose(np.asarray(responses, np.float32), (2, 1, 0)).reshape(n_trial * n_stim, n_roi)
    fluorescence = Fluorescence()
    module.add(fluorescence)
    fluorescence.create_roi_response_series(
        name="responses", data=data, unit="dF/F", starting_time=0.0, rate=1.0,
        rois=table.create_roi_table_region(region=list(range(n_roi)), description="all"),
        description="one sample per stimulus presentation (trials table, same order)")
    nwb.add_trial_column(name="stimulus_id", description="stimulus of the presentation")
    nwb.add_trial_column(name="orientation_deg", description="grating orientation, degrees (NaN: blank)")
    for k, (trial, stim) in enumerate(np.ndindex(n_trial, n_stim)):
        nwb.add_trial(start_time=float(k), stop_time=float(k + 1), stimulus_id=int(stimuli["stimulus_id"].iloc[stim]),
                      orientation_deg=float(stimuli["orientation_deg"].iloc[stim]))
    tmp = path.with_suffix(".tmp.nwb")
    with NWBHDF5IO(str(tmp), "w") as io_:
        io_.write(nwb)
    tmp.replace(path)


def read_nwb(path: str | Path):
    """``(rois, responses, stimuli)`` from an NWB file laid out as the module docstring says; ValueError (naming
    the file) for a missing part, unequal presentations per stimulus, NaN responses or mismatched counts."""
    from pynwb import NWBHDF5IO
    from pynwb.ophys import PlaneSegmentation, RoiResponseSeries

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with NWBHDF5IO(str(path), "r") as io_:
        nwb = io_.read()
        objects = list(nwb.objects.values())
        tables = [o for o in objects if isinstance(o, PlaneSegmentation)]
        series = [o for o in objects if isinstance(o, RoiResponseSeries)]
        if len(tables) != 1 or len(series) != 1:
            raise ValueError(f"{path}: needs exactly one PlaneSegmentation and one RoiResponseSeries "
                             f"(found {len(tables)} and {len(series)})")
        table, series = tables[0], series[0]
        frame = table.to_dataframe()
        if {"x_um", "y_um", "z_um"} <= set(frame.columns):
            centres = frame[["x_um", "y_um", "z_um"]].to_numpy(float)
        else:
            centres = _mask_centres(table, path)
        ids = frame["roi_id"].to_numpy(np.int64) if "roi_id" in frame else frame.index.to_numpy(np.int64)
        data = np.asarray(series.data[:], np.float64)
        region = np.asarray(series.rois.data[:], np.int64)
        if nwb.trials is None:
            raise ValueError(f"{path}: no trials table (one row per presentation, with stimulus_id, orientation_deg)")
        trials = nwb.trials.to_dataframe()
    missing = [c for c in ("stimulus_id", "orientation_deg") if c not in trials]
    if missing:
        raise ValueError(f"{path}: trials table lacks column(s) {missing}")
    if data.ndim != 2 or data.shape[0] != len(trials):
        raise ValueError(f"{path}: {data.shape[0] if data.ndim else 0} response samples but {len(trials)} trials "
                         "(one sample per presentation)")
    rois = pd.DataFrame({"roi_id": ids[region], "x_um": centres[region, 0], "y_um": centres[region, 1],
                         "z_um": centres[region, 2]})
    if rois["roi_id"].duplicated().any():
        raise ValueError(f"{path}: duplicated roi_id values {rois.loc[rois['roi_id'].duplicated(), 'roi_id'].tolist()[:5]}")
    stimuli = trials.drop_duplicates("stimulus_id")[["stimulus_id", "orientation_deg"]].reset_index(drop=True)
    counts = trials["stimulus_id"].value_counts()
    if counts.nunique() != 1:
        raise ValueError(f"{path}: stimuli were presented unequal numbers of times ({counts.to_dict()}); the "
                         "responses need as many trials of every stimulus")
    order = [np.flatnonzero(trials["stimulus_id"].to_numpy() == s) for s in stimuli["stimulus_id"]]
    responses = np.stack([data[rows].T for rows in order], axis=1)  # (roi, stimulus, trial)
    return rois, _checked_responses(responses, path, rois, stimuli, path, path), stimuli


def _mask_centres(table, path) -> np.ndarray:
    """Weighted centroids (µm) of a PlaneSegmentation's voxel or pixel masks, through its imaging plane's grid."""
    plane = table.imaging_plane
    spacing = np.asarray(plane.grid_spacing if plane.grid_spacing is not None else [1.0, 1.0, 1.0], float)
    origin = np.asarray(plane.origin_coords if plane.origin_coords is not None else [0.0, 0.0, 0.0], float)
    spacing = np.resize(spacing, 3)
    origin = np.resize(origin, 3) if origin.size >= 3 else np.r_[origin, np.zeros(3 - origin.size)]
    column = "voxel_mask" if "voxel_mask" in table.colnames else "pixel_mask" if "pixel_mask" in table.colnames else None
    if column is None:
        raise ValueError(f"{path}: ROIs have neither x_um/y_um/z_um columns nor voxel or pixel masks")
    centres = []
    for mask in table[column][:]:
        m = np.asarray([tuple(v) for v in mask], float)
        if column == "pixel_mask":
            m = np.c_[m[:, :2], np.zeros(len(m)), m[:, 2]]
        w = m[:, 3] / m[:, 3].sum()
        centres.append(origin + (m[:, :3] * w[:, None]).sum(axis=0) * spacing)
    return np.asarray(centres).reshape(-1, 3)


def neuron_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a neuron table that are neurons: ``is_neuron`` true (when present) and a finite soma position."""
    keep = np.isfinite(table[list(SOMA_COLUMNS)].to_numpy(float)).all(axis=1)
    if "is_neuron" in table:
        keep &= table["is_neuron"].fillna(False).to_numpy(bool)
    return table[keep].reset_index(drop=True)


def load_somata(path: str | Path) -> pd.DataFrame:
    """EM neurons (``id``, ``soma_x_nm``, ``soma_y_nm``, ``soma_z_nm``): ``is_neuron`` rows with a soma position."""
    table = read_table(path)
    missing = [c for c in ("id", *SOMA_COLUMNS) if c not in table]
    if missing:
        raise ValueError(f"{path}: neuron table lacks column(s) {missing}")
    table = neuron_rows(table)[["id", *SOMA_COLUMNS]]
    return table.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Transforms


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 (or 3x4) affine to (n, 3) points."""
    matrix = np.asarray(matrix, float)
    return np.asarray(points, float) @ matrix[:3, :3].T + matrix[:3, 3]


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 4x4 affine with ``dst ≈ A src + t`` from >= 4 non-coplanar pairs."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if len(src) < 4:
        raise ValueError(f"an affine needs at least 4 point pairs, got {len(src)}")
    # Centre for conditioning (EM coordinates are ~1e4-1e5 nm).
    cs, cd = src.mean(0), dst.mean(0)
    a, *_ = np.linalg.lstsq(src - cs, dst - cd, rcond=None)
    matrix = np.eye(4)
    matrix[:3, :3] = a.T
    matrix[:3, 3] = cd - a.T @ cs
    return matrix


def fit_similarity(src: np.ndarray, dst: np.ndarray, reflection: bool = False) -> np.ndarray:
    """Umeyama similarity (scale * rotation + translation) as a 4x4 matrix; ``reflection`` flips the last axis."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    cs, cd = src.mean(0), dst.mean(0)
    xs, xd = src - cs, dst - cd
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.ones(3)
    if (np.linalg.det(u) * np.linalg.det(vt) < 0) != reflection:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var = (xs**2).sum() / len(src)
    scale = (sv * d).sum() / var if var > 0 else 1.0
    matrix = np.eye(4)
    matrix[:3, :3] = scale * rot
    matrix[:3, 3] = cd - scale * rot @ cs
    return matrix


@dataclass
class FitResult:
    """A fitted EM(nm) -> imaging(µm) affine with its support."""

    matrix: np.ndarray
    method: str
    n_inliers: int
    sigma_um: float  # robust per-axis residual scale of the inlier pairs, corrected for the fitted parameters
    info: dict = field(default_factory=dict)


def _sigma(residuals: np.ndarray) -> float:
    # 3-D isotropic noise: d^2 ~ sigma^2 chi2(3), whose median is 2.366.
    return float(np.sqrt(np.median(residuals**2) / 2.366)) if len(residuals) else float("nan")


def sigma_upper_bound(sigma: float, n_pairs: int, confidence: float = 0.95) -> float:
    """Upper ``confidence`` bound of a per-axis noise sigma that ``_sigma`` estimated from ``n_pairs`` 3-D residuals
    (from the median of d^2, an order statistic of chi2(3) draws: its low quantile follows from a beta distribution).
    With tens of pairs the estimate is itself uncertain by 10-15 %: a gate of five estimated sigmas could fall near
    four true ones (phantom seed 19: sigma 0.023 um estimated, the imaging jitter is 0.03 um, and a right ROI at
    0.119 um was left out by a 0.116 um gate)."""
    from scipy.stats import beta, chi2

    n = max(int(n_pairs), 1)
    k = (n + 1) / 2  # the middle order statistic (for even n, between the two that the median averages)
    low = chi2.ppf(beta.ppf(1 - confidence, k, n - k + 1), 3)
    return float(sigma * np.sqrt(chi2.median(3) / low))


def icp_refine(
    em: np.ndarray,
    rois: np.ndarray,
    matrix: np.ndarray,
    gate_um: float,
    max_iterations: int = 50,
    trim_sigmas: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed ICP: mutual nearest neighbours within the gate and ``trim_sigmas`` robust sigmas -> affine refit.

    Returns the refined matrix and the (roi index, soma index) inlier pairs of the last iteration.
    """
    pairs = np.zeros((0, 2), int)
    for _ in range(max_iterations):
        moved = apply_affine(matrix, em)
        d_rs, s_of_r = cKDTree(moved).query(rois)
        _, r_of_s = cKDTree(rois).query(moved)
        mutual = r_of_s[s_of_r] == np.arange(len(rois))
        keep = mutual & (d_rs < gate_um)
        if keep.sum() >= 8:
            # Trim pairs beyond trim_sigmas robust per-axis sigmas (but always keep the better half).
            keep &= d_rs <= max(trim_sigmas * _sigma(d_rs[keep]), np.median(d_rs[keep]))
        new_pairs = np.column_stack([np.flatnonzero(keep), s_of_r[keep]])
        if len(new_pairs) < 4:
            break
        src = em[new_pairs[:, 1]]
        new_matrix = fit_affine(src, rois[new_pairs[:, 0]]) if _spans_3d(src) else fit_similarity(
            src, rois[new_pairs[:, 0]], np.linalg.det(matrix[:3, :3]) < 0)
        converged = np.array_equal(new_pairs, pairs)
        matrix, pairs = new_matrix, new_pairs
        if converged:
            break
    return matrix, pairs


def _spans_3d(points: np.ndarray, ratio: float = 1e-3) -> bool:
    if len(points) < 4:
        return False
    sv = np.linalg.svd(points - points.mean(0), compute_uv=False)
    return sv[-1] > ratio * sv[0]


def fit_from_landmarks(em_nm: np.ndarray, imaging_um: np.ndarray) -> np.ndarray:
    """Affine from landmark pairs: least squares for >= 4 non-coplanar pairs, similarity for 3 or coplanar."""
    em_nm, imaging_um = np.asarray(em_nm, float), np.asarray(imaging_um, float)
    if len(em_nm) != len(imaging_um) or len(em_nm) < 3:
        raise ValueError(f"landmarks: need >= 3 pairs of EM and imaging points, got {len(em_nm)}/{len(imaging_um)}")
    return fit_affine(em_nm, imaging_um) if _spans_3d(em_nm) else fit_similarity(em_nm, imaging_um)


def ransac_unknown_correspondence(
    em_nm: np.ndarray,
    rois_um: np.ndarray,
    scale_um_per_nm: float = 1e-3,
    scale_tolerance: float = 0.2,
    inlier_um: float = 3.0,
    iterations: int = 2000,
    max_pairs: int = 40,
    min_side_um: float = 5.0,
    allow_reflection: bool = True,
    confidence: float = 0.999,
    seed: int = 0,
) -> tuple[np.ndarray, int, dict]:
    """Similarity EM(nm) -> imaging(µm) without known correspondences (RANSAC over triangle correspondences).

    Each iteration draws three ROIs (sides >= ``min_side_um``), finds soma triangles whose side lengths match after
    a common scale within ``scale_um_per_nm * (1 ± scale_tolerance)`` (to ``inlier_um``), fits a similarity per
    candidate (and its mirror image when ``allow_reflection``) and scores it by the truncated squared distance of
    every ROI to its nearest mapped soma (MSAC). Stops early by the standard RANSAC bound for ``confidence``.
    Returns (4x4 matrix, inlier count, diagnostics).
    """
    rng = np.random.default_rng(seed)
    em_nm, rois_um = np.asarray(em_nm, float), np.asarray(rois_um, float)
    n, m = len(rois_um), len(em_nm)
    if n < 3 or m < 3:
        raise ValueError(f"co-registration needs >= 3 ROIs and >= 3 somata, got {n} and {m}")
    p = em_nm * scale_um_per_nm  # somata in approximately µm
    p_tree = cKDTree(p)
    dp = np.linalg.norm(p[:, None] - p[None], axis=-1)
    iu = np.triu_indices(m, 1)
    pair_d = dp[iu]
    order = np.argsort(pair_d)
    pair_sorted = pair_d[order]
    dq = np.linalg.norm(rois_um[:, None] - rois_um[None], axis=-1)
    lo, hi = 1 - scale_tolerance, 1 + scale_tolerance

    best = (np.inf, None, 0)
    needed, it, tried = iterations, 0, 0
    while it < min(iterations, needed):
        it += 1
        a, b, c = rng.choice(n, 3, replace=False)
        sides = dq[a, b], dq[a, c], dq[b, c]
        if min(sides) < min_side_um:
            continue
        # Soma pairs whose distance matches |ab| for some scale in range.
        i0 = np.searchsorted(pair_sorted, (sides[0] - inlier_um) / hi)
        i1 = np.searchsorted(pair_sorted, (sides[0] + inlier_um) / lo)
        cand = order[i0:i1]
        if len(cand) == 0:
            continue
        if len(cand) > max_pairs:
            cand = rng.choice(cand, max_pairs, replace=False)
        for k in cand:
            for i, j in ((iu[0][k], iu[1][k]), (iu[1][k], iu[0][k])):
                s = sides[0] / dp[i, j]
                err = np.maximum(np.abs(s * dp[i] - sides[1]), np.abs(s * dp[j] - sides[2]))
                err[[i, j]] = np.inf
                for l in np.flatnonzero(err < inlier_um):
                    src, dst = p[[i, j, l]], rois_um[[a, b, c]]
                    for mirror in (False, True) if allow_reflection else (False,):
                        sim = fit_similarity(src, dst, reflection=mirror)
                        scale = np.cbrt(abs(np.linalg.det(sim[:3, :3])))
                        if not lo <= scale <= hi:
                            continue
                        tried += 1
                        # Score in soma space: map ROIs back with the inverse similarity.
                        back = apply_affine(np.linalg.inv(sim), rois_um)
                        d, _ = p_tree.query(back, distance_upper_bound=inlier_um / scale)
                        d = np.minimum(d * scale, inlier_um)
                        cost = float((d**2).sum())
                        if cost < best[0]:
                            inliers = int((d < inlier_um).sum())
                            best = (cost, sim, inliers)
                            w = inliers / n
                            if w > 0:
                                needed = int(np.ceil(np.log(1 - confidence) / np.log(max(1 - w**3, 1e-12))))
    if best[1] is None:
        raise ValueError("co-registration: RANSAC found no consistent soma triangle; check the scale prior "
                         "(coregister.scale_um_per_nm) and ransac.inlier_um")
    matrix = best[1].copy()
    matrix[:3, :3] *= scale_um_per_nm  # from pre-scaled somata back to nm
    return matrix, best[2], {"iterations": it, "hypotheses": tried, "msac_cost": best[0]}


def estimate_transform(
    em_nm: np.ndarray, rois_um: np.ndarray, params: dict, landmarks: list | None = None
) -> FitResult:
    """The EM(nm) -> imaging(µm) affine: landmarks (+ optional ICP) when given, else RANSAC + trimmed ICP."""
    gate = params["gate_um"]
    icp = params["icp"]
    if landmarks:
        src = np.array([lm["em_nm"] for lm in landmarks], float)
        dst = np.array([lm["imaging_um"] for lm in landmarks], float)
        matrix, method, info = fit_from_landmarks(src, dst), "landmarks", {"n_landmarks": len(landmarks)}
        if not params["refine_landmarks"]:
            moved = apply_affine(matrix, em_nm)
            d, _ = cKDTree(moved).query(rois_um)
            inl = d < gate
            return FitResult(matrix, method, int(inl.sum()), _sigma(d[inl]), info)
    else:
        r = params["ransac"]
        matrix, n_inl, info = ransac_unknown_correspondence(
            em_nm, rois_um, params["scale_um_per_nm"], params["scale_tolerance"], r["inlier_um"], r["iterations"],
            r["max_pairs"], r["min_side_um"], params["allow_reflection"], r["confidence"], r["seed"],
        )
        method = "ransac+icp"
        info["ransac_inliers"] = n_inl
    matrix, pairs = icp_refine(em_nm, rois_um, matrix, gate, icp["max_iterations"], icp["trim_sigmas"])
    d = np.linalg.norm(apply_affine(matrix, em_nm[pairs[:, 1]]) - rois_um[pairs[:, 0]], axis=1)
    # the affine was fitted to these pairs (4 parameters per axis), so their residuals understate the noise
    dof = len(pairs) / (len(pairs) - 4) if len(pairs) > 8 else 1.0
    return FitResult(matrix, method if landmarks is None else "landmarks+icp", len(pairs), _sigma(d) * np.sqrt(dof),
                     info)


# ----------------------------------------------------------------------------------------------------------------
# Assignment


def assign_ilp(
    distances: np.ndarray, gate: float, unmatched_cost: float | None = None, sigma: float | None = None
) -> pd.DataFrame:
    """One-to-one ROI -> soma assignment by integer linear programming (pulp + CBC).

    ``distances`` is (n_roi, n_soma) in µm. Pairs beyond ``gate`` are never considered; leaving an ROI unmatched costs
    ``unmatched_cost`` (default: the gate). Returns one row per ROI: ``roi`` (row index), ``soma`` (column index or
    -1), ``distance`` (NaN when unmatched) and ``confidence``: the match's Gaussian weight ``w = exp(-d^2 / 2 sigma^2)``
    over itself plus every competing pair in its row and column and the unmatched option (0 when unmatched;
    two ROIs equidistant to one soma give <= 0.5). ``sigma`` defaults to gate / 3.
    """
    import pulp

    distances = np.asarray(distances, float)
    n, m = distances.shape
    cost_u = gate if unmatched_cost is None else float(unmatched_cost)
    sigma = gate / 3 if not sigma or not np.isfinite(sigma) else float(sigma)
    rows, cols = np.nonzero(distances <= gate)
    prob = pulp.LpProblem("roi_soma_assignment", pulp.LpMinimize)
    x = {(r, c): prob.add_variable(f"x_{r}_{c}", cat="Binary") for r, c in zip(rows.tolist(), cols.tolist())}
    u = {r: prob.add_variable(f"u_{r}", cat="Binary") for r in range(n)}
    prob += pulp.lpSum(distances[r, c] * v for (r, c), v in x.items()) + cost_u * pulp.lpSum(u.values())
    by_row: dict[int, list] = {r: [] for r in range(n)}
    by_col: dict[int, list] = {}
    for (r, c), v in x.items():
        by_row[r].append(v)
        by_col.setdefault(c, []).append(v)
    for r in range(n):
        prob += pulp.lpSum(by_row[r]) + u[r] == 1, f"roi_{r}"
    for c, vs in by_col.items():
        if len(vs) > 1:
            prob += pulp.lpSum(vs) <= 1, f"soma_{c}"
    with warnings.catch_warnings():  # PULP_CBC_CMD (the bundled CBC) is flagged for PuLP 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        solver = pulp.PULP_CBC_CMD(msg=False, threads=1)
    status = prob.solve(solver)
    if pulp.LpStatus[status] != "Optimal":
        raise RuntimeError(f"assignment ILP not solved to optimality: {pulp.LpStatus[status]}")
    soma = np.full(n, -1)
    for (r, c), v in x.items():
        if v.value() is not None and v.value() > 0.5:
            soma[r] = c
    w = np.where(distances <= gate, np.exp(-(distances**2) / (2 * sigma**2)), 0.0)
    w_unmatched = np.exp(-(cost_u**2) / (2 * sigma**2))
    out_d = np.full(n, np.nan)
    conf = np.zeros(n)
    for r in np.flatnonzero(soma >= 0):
        c = soma[r]
        out_d[r] = distances[r, c]
        total = w[r].sum() + w[:, c].sum() - w[r, c] + w_unmatched
        conf[r] = w[r, c] / total if total > 0 else 0.0
    return pd.DataFrame({"roi": np.arange(n), "soma": soma, "distance": out_d, "confidence": conf})


def coregister(rois: pd.DataFrame, somata: pd.DataFrame, params: dict, landmarks: list | None = None):
    """Fit the transform and assign ROIs to somata.

    Returns ``(matches, fit, effective_gate_um)``; ``matches`` has one row per ROI: ``roi_id``, ``neuron_id`` (0 when
    unmatched), ``distance`` (µm, NaN when unmatched), ``confidence`` (0-1).
    """
    em = somata[list(SOMA_COLUMNS)].to_numpy(float)
    q = rois[list(ROI_COLUMNS[1:])].to_numpy(float)
    fit = estimate_transform(em, q, params, landmarks)
    gate = params["gate_um"]
    if params["gate_sigmas"] > 0 and np.isfinite(fit.sigma_um) and fit.n_inliers >= 8:
        gate = min(gate, params["gate_sigmas"] * sigma_upper_bound(fit.sigma_um, fit.n_inliers))
    moved = apply_affine(fit.matrix, em)
    dist = np.linalg.norm(q[:, None] - moved[None], axis=-1)
    unmatched = params.get("unmatched_cost_um")
    assigned = assign_ilp(dist, gate, gate if unmatched is None else unmatched, fit.sigma_um)
    ids = somata["id"].to_numpy()
    matches = pd.DataFrame({
        "roi_id": rois["roi_id"].to_numpy(np.int64),
        "neuron_id": np.where(assigned["soma"] >= 0, ids[np.maximum(assigned["soma"], 0)], 0).astype(np.uint64),
        "distance": assigned["distance"].to_numpy(float),
        "confidence": assigned["confidence"].to_numpy(float),
    })
    return matches, fit, float(gate)


# ----------------------------------------------------------------------------------------------------------------
# CLI

def merged_params(params: dict | None) -> dict:
    """``params`` over the schema's defaults of the `coregister:` section, without the workflow's keys (the
    functional data and landmarks of each dataset, which the rule passes as files and ``--landmarks``)."""
    return config.resolve("coregister", params, omit=("functional", "landmarks"))


def add_arguments(parser) -> None:
    parser.add_argument("--rois", required=True, help="ROI table (.parquet/.csv): roi_id, x_um, y_um, z_um")
    parser.add_argument("--responses", required=True, help="responses .npy (roi, stimulus, trial)")
    parser.add_argument("--stimuli", required=True, help="stimulus table (.parquet/.csv): stimulus_id, orientation_deg")
    parser.add_argument("--neurons", required=True, help="EM neurons.parquet (id, soma_*_nm)")
    parser.add_argument("--params", default="{}", help="JSON: the config's coregister section (defaults filled)")
    parser.add_argument("--landmarks", default="[]",
                        help="JSON list of {em_nm: [x, y, z], imaging_um: [x, y, z]} pairs (empty: estimate)")
    parser.add_argument("--out", required=True, help="matches.parquet to write")
    parser.add_argument("--transform", required=True, help="JSON to write: the fitted affine and fit statistics")


def run(args) -> int:
    from connectomix import provenance
    from connectomix.blocks import atomic_write_json, atomic_write_parquet

    params = merged_params(json.loads(args.params))
    landmarks = json.loads(args.landmarks) or None
    rois, _, _ = load_functional(args.rois, args.responses, args.stimuli)
    somata = load_somata(args.neurons)
    if len(somata) < 3 and not landmarks:
        # Nothing to register against (e.g. no segment was recognised as a neuron): every ROI stays unmatched.
        print(f"coregister: only {len(somata)} EM somata (< 3); all {len(rois)} ROIs left unmatched")
        matches = pd.DataFrame({"roi_id": rois["roi_id"].to_numpy(), "neuron_id": np.zeros(len(rois), np.uint64),
                                "distance": np.full(len(rois), np.nan), "confidence": np.zeros(len(rois))})
        fit, gate = FitResult(np.full((4, 4), np.nan), "none: too few somata", 0, float("nan")), float("nan")
    else:
        matches, fit, gate = coregister(rois, somata, params, landmarks)
    atomic_write_parquet(matches, args.out)
    n_matched = int((matches["neuron_id"] > 0).sum())
    atomic_write_json(args.transform, {
        "matrix": fit.matrix.tolist(),
        "direction": "EM (x, y, z, 1) nm -> imaging (x, y, z) um",
        "method": fit.method,
        "n_inliers": fit.n_inliers,
        "sigma_um": fit.sigma_um,
        "gate_um": gate,
        "n_rois": len(rois),
        "n_somata": len(somata),
        "n_matched": n_matched,
        "info": fit.info,
        "provenance": provenance.record(params, {
            p: provenance.file_checksum(p) for p in (args.rois, args.responses, args.stimuli, args.neurons)}),
    })
    print(f"coregister: {fit.method}, {fit.n_inliers} inlier pairs, sigma {fit.sigma_um:.3f} um, gate {gate:.2f} um; "
          f"{n_matched}/{len(rois)} ROIs matched")
    return 0
