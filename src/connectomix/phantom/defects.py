"""Serial-section misalignment and defects of the phantom's raw image, with their ground truth.

Each section ``z`` of the observed ``raw`` shows, at pixel ``q`` (y, x), the aligned tissue at ``M_z(q)``:

    M_z(q) = c + A_z (q - c) + t_z + u_z(q) + fold/crack offset

with ``c`` the section centre, ``A_z`` a small rotation and scale/shear, ``t_z`` a random walk plus jitter of
translations, ``u_z`` a smooth elastic field (Gaussian-filtered noise) and, on fold and crack sections, a step
across a straight line (a fold loses a stripe of tissue, a crack opens an empty gap). Translations, rotations and
elastic fields have zero mean over the stack, so the aligned frame is the stack's mean frame (the gauge an aligner
without outside reference recovers). Missing sections are all zero, blank ones noise only, low-contrast ones have
their contrast scaled down. The ground-truth labels stay in the aligned frame; only ``raw`` is deformed.

Ground truth (:func:`truth_tables`): a per-section table (status, transform parameters) and a point table: a grid of
observed-raw positions with the aligned position each shows (``valid`` false in a missing or blank section and on a
fold/crack band), which ``connectomix.align.evaluate`` compares an alignment with.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

# defect codes, shared with connectomix.align (bit flags of the `defects` arrays)
NO_DATA, MISSING, LOW_CONTRAST, FOLD = 1, 2, 4, 8
KEYS = ("misalign_step_nm", "misalign_jitter_nm", "misalign_rotation_deg", "misalign_scale", "elastic_nm",
        "elastic_length_nm", "missing_sections", "blank_sections", "low_contrast_sections", "low_contrast_factor",
        "folds", "cracks", "fold_width_nm")
POINT_SPACING_PX = 8


def active(params) -> bool:
    """Whether the params ask for any misalignment or defect."""
    return any(getattr(params, k) for k in KEYS if k not in ("elastic_length_nm", "low_contrast_factor", "fold_width_nm"))


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def draw(params, shape, voxel, seed_offset: int = 7919) -> dict:
    """The random transforms and defects of every section (their own random stream: the tissue does not change)."""
    rng = np.random.default_rng([params.seed, seed_offset])
    nz = shape[0]
    px = float(voxel[1])
    step = rng.normal(0, params.misalign_step_nm / px, (nz, 2))
    t = np.cumsum(step, axis=0) + rng.normal(0, params.misalign_jitter_nm / px, (nz, 2))
    t -= t.mean(axis=0)
    rot = rng.normal(0, params.misalign_rotation_deg, nz)
    rot -= rot.mean()
    shear = rng.normal(0, params.misalign_scale, (nz, 3))
    affine = np.stack([_rotation(r) @ (np.eye(2) + np.array([[s[0], s[2]], [s[2], s[1]]]))
                       for r, s in zip(rot, shear)])
    # defects on distinct interior sections
    counts = {"missing": params.missing_sections, "blank": params.blank_sections,
              "low_contrast": params.low_contrast_sections, "fold": params.folds, "crack": params.cracks}
    interior = np.arange(1, nz - 1)
    if sum(counts.values()) > len(interior):
        raise ValueError(f"phantom: {sum(counts.values())} defect sections do not fit in the {len(interior)} "
                         f"interior sections of shape {list(shape)}")
    picked = iter(rng.permutation(interior))
    status = np.array(["ok"] * nz, dtype=object)
    for kind, n in counts.items():
        for _ in range(n):
            status[next(picked)] = kind
    lines = {int(z): (rng.uniform(0, np.pi), rng.uniform(0.3, 0.7, 2) * np.array(shape[1:]))
             for z in np.flatnonzero(np.isin(status, ["fold", "crack"]))}
    return {"translation": t, "rotation_deg": rot, "affine": affine, "status": status, "lines": lines,
            "elastic_rng": rng}


def elastic_fields(draw_: dict, params, shape, voxel) -> np.ndarray:
    """Smooth displacement fields (z, 2, y, x) in px, zero mean over the stack."""
    nz, ny, nx = shape
    amp, sigma = params.elastic_nm / voxel[1], params.elastic_length_nm / voxel[1]
    if amp <= 0:
        return np.zeros((nz, 2, ny, nx), np.float32)
    rng = draw_["elastic_rng"]
    fields = np.empty((nz, 2, ny, nx), np.float32)
    for z in range(nz):
        for c in range(2):
            f = ndimage.gaussian_filter(rng.normal(size=(ny, nx)), sigma, mode="wrap")
            f -= f.mean()  # a constant part would be a translation
            fields[z, c] = f * (amp / max(float(f.std()), 1e-9))
    fields -= fields.mean(axis=0, keepdims=True)
    return fields


def section_map(d: dict, elastic: np.ndarray, z: int, q: np.ndarray, params, voxel) -> tuple[np.ndarray, np.ndarray]:
    """The aligned positions (2, ...) the observed positions ``q`` (2, ...) of section ``z`` show, and the
    fold/crack band mask (pixels that show no aligned tissue where a line defect is)."""
    col = (2,) + (1,) * (q.ndim - 1)
    centre = ((np.array(elastic.shape[2:], float) - 1) / 2).reshape(col)
    m = np.tensordot(d["affine"][z], q - centre, axes=1) + centre + d["translation"][z].reshape(col)
    m = m + np.stack([ndimage.map_coordinates(elastic[z, c], q, order=1, mode="nearest") for c in range(2)])
    band = np.zeros(q.shape[1:], bool)
    if z in d["lines"]:
        angle, point = d["lines"][z]
        n = np.array([np.cos(angle), np.sin(angle)]).reshape(col)
        s = ((q - point.reshape(col)) * n).sum(axis=0)
        w = params.fold_width_nm / voxel[1]
        if d["status"][z] == "fold":  # a stripe of width w folded under: lost; a dark double layer at the line
            m = m + np.where(s > 0, w, 0.0) * n
            band = np.abs(s) < 1.5
        else:  # a crack: the tissue beyond the line pulled away by w, an empty gap between
            m = m - np.where(s > w, w, 0.0) * n
            band = (s >= 0) & (s <= w)
    return m, band


def apply(raw: np.ndarray, params, voxel) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """The observed raw (deformed, with defects), the defect mask (uint8 bit flags), the draw and elastic fields."""
    shape = raw.shape
    d = draw(params, shape, voxel)
    elastic = elastic_fields(d, params, shape, voxel)
    rng = np.random.default_rng([params.seed, 104729])
    q = np.mgrid[0:shape[1], 0:shape[2]].astype(np.float64)
    out = np.empty_like(raw)
    mask = np.zeros(shape, np.uint8)
    grey = float(raw.mean())
    for z in range(shape[0]):
        status = d["status"][z]
        if status == "missing":
            out[z] = 0
            mask[z] = MISSING
            continue
        if status == "blank":
            out[z] = np.clip(np.rint(rng.normal(grey, params.noise_sigma, shape[1:])), 0, 255)
            mask[z] = MISSING
            continue
        m, band = section_map(d, elastic, z, q, params, voxel)
        img = ndimage.map_coordinates(raw[z].astype(np.float32), m, order=3, mode="reflect")
        if status == "fold":
            img[band] *= 0.45
        elif status == "crack":
            img[band] = rng.normal(225, params.noise_sigma, int(band.sum()))
        elif status == "low_contrast":
            mean = float(img.mean())
            img = mean + (img - mean) * params.low_contrast_factor
            mask[z] = LOW_CONTRAST
        mask[z][band] = FOLD
        out[z] = np.clip(np.rint(img), 0, 255)
    return out, mask, d, elastic


def truth_tables(d: dict, elastic: np.ndarray, mask: np.ndarray, params, voxel) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sections, points): per section its status and transform parameters (translation in nm, the 2x2 matrix,
    the line of a fold or crack); per grid point (every POINT_SPACING_PX pixels) its observed raw position and the
    aligned position it shows, in nm, ``valid`` false in a missing/blank section and on a fold/crack band."""
    nz, ny, nx = mask.shape
    vy, vx = float(voxel[1]), float(voxel[2])
    rows = []
    for z in range(nz):
        angle, point = d["lines"].get(z, (np.nan, np.array([np.nan, np.nan])))
        a = d["affine"][z]
        rows.append({"z": z, "status": str(d["status"][z]), "translation_y_nm": d["translation"][z, 0] * vy,
                     "translation_x_nm": d["translation"][z, 1] * vx, "rotation_deg": float(d["rotation_deg"][z]),
                     "a_yy": a[0, 0], "a_yx": a[0, 1], "a_xy": a[1, 0], "a_xx": a[1, 1],
                     "line_angle_deg": float(np.rad2deg(angle)), "line_y_nm": point[0] * vy,
                     "line_x_nm": point[1] * vx,
                     "elastic_rms_nm": float(np.sqrt((elastic[z] ** 2).sum(axis=0).mean())) * vy})
    sections = pd.DataFrame(rows)
    ys = np.arange(POINT_SPACING_PX // 2, ny, POINT_SPACING_PX)
    xs = np.arange(POINT_SPACING_PX // 2, nx, POINT_SPACING_PX)
    q = np.stack(np.meshgrid(ys, xs, indexing="ij")).astype(np.float64).reshape(2, -1)
    parts = []
    for z in range(nz):
        m, band = section_map(d, elastic, z, q, params, voxel)
        valid = ~band & (d["status"][z] not in ("missing", "blank"))
        parts.append(pd.DataFrame({"z": np.full(q.shape[1], z, np.int32), "raw_y_nm": q[0] * vy,
                                   "raw_x_nm": q[1] * vx, "aligned_y_nm": m[0] * vy, "aligned_x_nm": m[1] * vx,
                                   "valid": valid}))
    return sections, pd.concat(parts, ignore_index=True)
