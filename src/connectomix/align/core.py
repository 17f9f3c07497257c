"""Serial-section alignment: defect detection, coarse and elastic matching, a global solve, rendering.

The model: the aligned section ``z`` at position ``p`` (y, x pixels) shows the raw section at ``p + D_z(p)``, where
``D_z`` is bilinear between the nodes of a regular mesh (``mesh_spacing_px``). :func:`estimate` finds every
section's mesh at once:

1. **Defects** (:func:`classify`): a section's structure (the std of its Gaussian-smoothed image, sigma 2 px: noise
   averages out, tissue stays) against the stack's median: ``missing`` (constant, e.g. all zero), ``blank`` (below
   ``blank_ratio``: no tissue), ``low_contrast`` (below ``low_contrast_ratio``: aligned, flagged, and its contrast
   equalized when ``equalize_contrast``), else ``ok``. Missing and blank sections are not matched.
2. **Coarse** (:func:`coarse`): each usable section against the next ``neighbours`` usable ones (so a missing
   section is bridged) by phase correlation (``skimage.registration.phase_cross_correlation``, Hann-windowed,
   subpixel); translations from a least-squares solve over all pairs (no chain: no drift).
3. **Elastic** (:func:`local_matches`): patches of ``2 x mesh_spacing_px`` around every node, cut at the coarse
   positions, matched the same way; a match is kept when its normalized cross-correlation reaches
   ``min_correlation`` and both patches have structure.
4. **Global solve** (:func:`solve`): one sparse least-squares problem (``scipy.sparse.linalg.lsqr``) over every
   node of every section: each match says ``D_z'(c) - D_z(c) = offset`` at its patch centre ``c`` (bilinear weights),
   the mesh's second differences are pulled to 0 (``smoothness``: affine motion is free, wiggles are not), every
   node weakly to 0 (``identity_weight``: fixes the stack's mean frame), and a missing section's nodes to the mean
   of its usable neighbours'. Matches whose residual is an outlier (3 MADs, at least 1 px) are dropped and the
   problem solved again.

Rendering (:func:`render`) depends only on the global mesh and raw, pixel by pixel (bilinear interpolation, order 1;
positions outside the raw section mirrored back into it), so a block renders exactly what a whole-volume render
gives at its pixels.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from connectomix.phantom.defects import LOW_CONTRAST, MISSING, NO_DATA

USABLE = ("ok", "low_contrast")
SMOOTH_PX = 2.0  # Gaussian sigma (px) before matching: pixel noise and the finest detail differ between sections


# --- defects -------------------------------------------------------------------------------------------------


def section_statistics(read: Callable[[int], np.ndarray], n: int, shape: Sequence[int] | None = None) -> pd.DataFrame:
    """Per section: mean, std and structure (std of the image smoothed with sigma 2 px). ``read(z)`` gives section
    ``z``; every section must have the shape of the first (or ``shape``): a clear error otherwise."""
    rows = []
    for z in range(n):
        img = np.asarray(read(z), dtype=np.float32)
        if shape is None:
            shape = img.shape
        if img.ndim != 2 or tuple(img.shape) != tuple(shape):
            raise ValueError(f"section {z} has shape {list(img.shape)}, expected {list(shape)} like section 0: "
                             "every section of a stack must have one size")
        rows.append({"z": z, "mean": float(img.mean()), "std": float(img.std()),
                     "structure": float(ndimage.gaussian_filter(img, 2.0).std())})
    return pd.DataFrame(rows)


def classify(stats: pd.DataFrame, blank_ratio: float, low_contrast_ratio: float) -> np.ndarray:
    """Each section's status: missing, blank, low_contrast or ok (see the module docstring)."""
    if len(stats) < 2:
        raise ValueError(f"a stack of {len(stats)} section(s) cannot be aligned: at least 2 are needed")
    structure = stats["structure"].to_numpy()
    constant = stats["std"].to_numpy() <= 1e-6
    reference = float(np.median(structure[~constant])) if (~constant).any() else 0.0
    status = np.where(constant, "missing", "ok").astype(object)
    if reference > 0:
        status[~constant & (structure < blank_ratio * reference)] = "blank"
        status[~constant & (structure >= blank_ratio * reference) & (structure < low_contrast_ratio * reference)] = \
            "low_contrast"
    if np.isin(status, USABLE).sum() < 2:
        raise ValueError(f"{int((~np.isin(status, USABLE)).sum())} of {len(status)} sections are blank or missing: "
                         "at least 2 sections with tissue are needed to align a stack")
    return status


# --- matching ------------------------------------------------------------------------------------------------


def _prepared(img: np.ndarray) -> np.ndarray:
    img = ndimage.gaussian_filter(np.asarray(img, np.float32), SMOOTH_PX)  # pixel noise differs between sections
    img = img - img.mean()
    window = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1])).astype(np.float32)
    return img * window


def _ncc(a: np.ndarray, b: np.ndarray, shift) -> float:
    """Normalized cross-correlation of a and b where they overlap once b is moved by the integer-rounded shift
    (a at x against b at x + shift)."""
    dy, dx = (int(round(s)) for s in shift)
    h, w = a.shape
    ay, by = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    ax, bx = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    pa, pb = a[ay, ax].astype(np.float64), b[by, bx].astype(np.float64)
    if pa.size < 16 or pa.std() == 0 or pb.std() == 0:
        return 0.0
    return float(np.corrcoef(pa.ravel(), pb.ravel())[0, 1])


def match(a: np.ndarray, b: np.ndarray, upsample: int = 10) -> tuple[np.ndarray, float]:
    """(s, ncc): ``a`` at x shows what ``b`` shows at x + s (pixels, y x), by phase correlation, and the normalized
    cross-correlation there."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(_prepared(a), _prepared(b), upsample_factor=upsample, normalization=None)
    s = -np.asarray(shift, float)
    return s, _ncc(a, b, s)


def pairs(status: np.ndarray, neighbours: int) -> list[tuple[int, int]]:
    """(z, z') pairs of usable sections: each with the next ``neighbours`` usable ones (missing ones skipped)."""
    usable = np.flatnonzero(np.isin(status, USABLE))
    return [(int(usable[i]), int(usable[j])) for i in range(len(usable))
            for j in range(i + 1, min(i + 1 + neighbours, len(usable)))]


def coarse(read, status, neighbours: int, identity_weight: float) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-section translations T (z, 2) px from whole-section phase correlation of the pairs, solved globally."""
    n = len(status)
    rows = []
    for z, z2 in pairs(status, neighbours):
        s, ncc = match(read(z), read(z2), upsample=10)
        rows.append({"z": z, "z2": z2, "dy": s[0], "dx": s[1], "ncc": ncc})
    table = pd.DataFrame(rows, columns=["z", "z2", "dy", "dx", "ncc"])
    keep = table.ncc.to_numpy() > 0.05
    rows_ = [(np.array([z2, z]), np.array([1.0, -1.0]), w)
             for z, z2, w in zip(table.z[keep], table.z2[keep], table.ncc[keep])]
    t = np.zeros((n, 2))
    weights = {"identity_weight": identity_weight, "affine_weight": 1.0, "elastic_weight": 1.0, "smoothness": 0.0}
    for axis, col in enumerate(("dy", "dx")):
        t[:, axis] = _lsq(n, 3, [(c * 3, k, w) for c, k, w in rows_], table[col][keep].to_numpy(), status,
                          weights)[::3]
    return t, table


def mesh_nodes(size: int, spacing: int) -> np.ndarray:
    """Node positions (pixels) along an axis of ``size`` pixels: evenly spaced, at most ``spacing`` apart, both
    ends included."""
    count = max(2, int(np.ceil((size - 1) / max(1, spacing))) + 1)
    return np.linspace(0.0, size - 1.0, count)


def _bilinear(nodes_y, nodes_x, y: float, x: float):
    """(flat node indices, weights) of the point (y, x) on the mesh."""
    fy = np.clip(y * (len(nodes_y) - 1) / nodes_y[-1], 0, len(nodes_y) - 1 - 1e-9)
    fx = np.clip(x * (len(nodes_x) - 1) / nodes_x[-1], 0, len(nodes_x) - 1 - 1e-9)
    iy, ix = int(fy), int(fx)
    wy, wx = fy - iy, fx - ix
    nx = len(nodes_x)
    cols = np.array([iy * nx + ix, iy * nx + ix + 1, (iy + 1) * nx + ix, (iy + 1) * nx + ix + 1])
    return cols, np.array([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])


def local_matches(read, status, t, nodes_y, nodes_x, params) -> pd.DataFrame:
    """Patch matches around every node of every pair of usable sections (see the module docstring)."""
    half = int(params["patch_px"]) // 2
    rows = []
    cache: dict = {}

    def section(z):  # sections come in increasing z: keep the last few only
        if z not in cache:
            if len(cache) > params["neighbours"] + 1:
                del cache[min(cache)]
            img = np.asarray(read(z), np.float32)
            cache[z] = (img, ndimage.gaussian_filter(img, 2.0))
        return cache[z]

    for z, z2 in pairs(status, params["neighbours"]):
        (a, sa), (b, sb) = section(z), section(z2)
        h, w = a.shape
        oz, oz2 = np.rint(t[z]).astype(int), np.rint(t[z2]).astype(int)
        ref_a, ref_b = sa.std(), sb.std()
        for y in nodes_y:
            for x in nodes_x:
                c = np.array([y, x])
                lo = np.maximum(np.maximum(-oz, -oz2), 0) + half
                hi = np.minimum(np.minimum(np.array([h, w]) - oz, np.array([h, w]) - oz2), [h, w]) - half
                if np.any(hi < lo):
                    continue
                c = np.clip(np.rint(c), lo, hi).astype(int)
                pa = (slice(c[0] + oz[0] - half, c[0] + oz[0] + half), slice(c[1] + oz[1] - half, c[1] + oz[1] + half))
                pb = (slice(c[0] + oz2[0] - half, c[0] + oz2[0] + half),
                      slice(c[1] + oz2[1] - half, c[1] + oz2[1] + half))
                if sa[pa].std() < 0.3 * ref_a or sb[pb].std() < 0.3 * ref_b:
                    continue  # no structure (an empty gap, a blank corner)
                s, ncc = match(a[pa], b[pb])
                if ncc < params["min_correlation"] or np.abs(s).max() > half / 2:
                    continue
                d = oz2 - oz + s
                rows.append({"z": z, "z2": z2, "y": float(c[0]), "x": float(c[1]), "dy": d[0], "dx": d[1],
                             "ncc": ncc})
    return pd.DataFrame(rows, columns=["z", "z2", "y", "x", "dy", "dx", "ncc"])


# --- the global solve ----------------------------------------------------------------------------------------


def _lsq(n_sections, per, match_rows, rhs, status, weights: dict, smooth_rows=()) -> np.ndarray:
    """Least squares over every section's unknowns (one axis; ``per`` per section: 3 affine terms, then the mesh
    nodes): ``match_rows`` [(columns, coefficients, weight)] with ``rhs``; the mesh's second differences
    (``smooth_rows``, weight ``smoothness``) and the mesh nodes (``elastic_weight``) pulled to 0, the affine terms
    to 0 (``identity_weight``), a missing section's unknowns to the mean of its nearest usable neighbours'."""
    n = n_sections * per
    data, ri, ci, b = [], [], [], []
    r = 0

    def add(cols, coef, value, weight):
        nonlocal r
        data.extend(np.asarray(coef, float) * weight)
        ci.extend(cols)
        ri.extend([r] * len(cols))
        b.append(value * weight)
        r += 1

    for (cols, coef, w), value in zip(match_rows, rhs):
        add(cols, coef, value, w)
    usable = np.flatnonzero(np.isin(status, USABLE))
    for z in range(n_sections):
        if status[z] not in USABLE:
            below, above = usable[usable < z], usable[usable > z]
            ends = [e[k] for e, k in ((below, -1), (above, 0)) if len(e)]
            for i in range(per):
                add([z * per + i] + [e * per + i for e in ends], [1.0] + [-1.0 / len(ends)] * len(ends), 0.0, 1.0)
            continue
        for cols in smooth_rows:
            add(z * per + 3 + cols, (1.0, -2.0, 1.0), 0.0, weights["smoothness"])
        for i in range(per):
            add([z * per + i], [1.0], 0.0, weights["identity_weight"] if i == 0 else
                weights["affine_weight"] if i < 3 else weights["elastic_weight"])
    a = sparse.csr_matrix((data, (ri, ci)), shape=(r, n))
    return spsolve((a.T @ a).tocsc(), a.T @ np.asarray(b))  # the normal equations: small, sparse, definite


def _smooth_rows(ny: int, nx: int) -> list[np.ndarray]:
    rows = []
    for iy in range(ny):
        for ix in range(nx):
            if 0 < iy < ny - 1:
                rows.append(np.array([(iy - 1) * nx + ix, iy * nx + ix, (iy + 1) * nx + ix]))
            if 0 < ix < nx - 1:
                rows.append(np.array([iy * nx + ix - 1, iy * nx + ix, iy * nx + ix + 1]))
    return rows


def _affine_terms(nodes_y, nodes_x, y, x) -> np.ndarray:
    """The affine part's coefficients at (y, x): 1, and y and x relative to the section centre over its
    half-size (well-conditioned)."""
    cy, cx = nodes_y[-1] / 2, nodes_x[-1] / 2
    return np.array([1.0, (y - cy) / max(cy, 1.0), (x - cx) / max(cx, 1.0)])


def solve(matches: pd.DataFrame, status, nodes_y, nodes_x, params, rounds: int = 3):
    """The displacement of every section on its mesh (z, 2, ny, nx) px from the local matches (module docstring,
    step 4): per section an affine part plus an elastic mesh, one sparse least-squares problem per axis. The
    matches come back with their residual and whether they were kept."""
    n, ny, nx = len(status), len(nodes_y), len(nodes_x)
    per = 3 + ny * nx
    rows = []
    for z, z2, y, x, w in zip(matches.z, matches.z2, matches.y, matches.x, matches.ncc):
        cols, wts = _bilinear(nodes_y, nodes_x, y, x)
        cols = np.concatenate([[0, 1, 2], 3 + cols])
        coef = np.concatenate([_affine_terms(nodes_y, nodes_x, y, x), wts])
        rows.append((np.concatenate([z2 * per + cols, z * per + cols]), np.concatenate([coef, -coef]), float(w)))
    smooth = _smooth_rows(ny, nx)
    keep = np.ones(len(rows), bool)
    matches = matches.copy()
    residual = np.zeros(len(rows))
    for _ in range(rounds + 1):
        flat = np.stack([_lsq(n, per, [r for r, k in zip(rows, keep) if k], matches[col].to_numpy()[keep],
                              status, params, smooth) for col in ("dy", "dx")])  # (2, n * per)
        if not rows:
            break
        pred = np.array([[flat[a][cols] @ coef for a in range(2)] for cols, coef, _ in rows])
        residual = np.hypot(*(pred - matches[["dy", "dx"]].to_numpy()).T)
        kept = residual[keep]
        limit = max(1.0, float(np.median(kept)) + 3 * 1.4826 * float(np.median(np.abs(kept - np.median(kept)))))
        new = residual <= limit
        if np.array_equal(new, keep):
            break
        keep = new
    matches["residual_px"] = residual
    matches["kept"] = keep
    unknowns = flat.reshape(2, n, per)
    gy, gx = np.meshgrid(nodes_y, nodes_x, indexing="ij")
    terms = np.stack([_affine_terms(nodes_y, nodes_x, y, x) for y, x in zip(gy.ravel(), gx.ravel())])  # (nodes, 3)
    mesh = unknowns[:, :, 3:] + np.einsum("azk,nk->azn", unknowns[:, :, :3], terms)
    return mesh.reshape(2, n, ny, nx).transpose(1, 0, 2, 3).copy(), matches


def estimate(read: Callable[[int], np.ndarray], n: int, params: dict, shape: Sequence[int] | None = None) -> dict:
    """Detect defects, match and solve (module docstring). ``read(z)`` returns section ``z`` (2D). Returns the
    ``status`` per section, ``stats`` (a table), ``translation`` (z, 2) px, the ``mesh`` (z, 2, ny, nx) px, its
    ``nodes_y`` / ``nodes_x`` and the ``matches`` table."""
    stats = section_statistics(read, n, shape)
    status = classify(stats, params["blank_ratio"], params["low_contrast_ratio"])
    h, w = np.asarray(read(0)).shape
    t, pair_table = coarse(read, status, params["neighbours"], params["identity_weight"])
    nodes_y, nodes_x = mesh_nodes(h, params["mesh_spacing_px"]), mesh_nodes(w, params["mesh_spacing_px"])
    matches = local_matches(read, status, t, nodes_y, nodes_x, params)
    mesh, matches = solve(matches, status, nodes_y, nodes_x, params)
    stats["status"] = status
    return {"status": status, "stats": stats, "translation": t, "mesh": mesh, "nodes_y": nodes_y,
            "nodes_x": nodes_x, "matches": matches, "pairs": pair_table}


# --- rendering -----------------------------------------------------------------------------------------------


def displacement(mesh_z: np.ndarray, size: Sequence[int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """D (2, len(ys), len(xs)) px at the pixels ys x xs of a section of ``size`` (h, w): bilinear on the mesh.
    Elementwise in global coordinates, so any crop gives the values of the whole section."""
    ny, nx = mesh_z.shape[1:]
    gy = np.asarray(ys, np.float64) * ((ny - 1) / (size[0] - 1))
    gx = np.asarray(xs, np.float64) * ((nx - 1) / (size[1] - 1))
    coords = np.stack(np.meshgrid(gy, gx, indexing="ij"))
    return np.stack([ndimage.map_coordinates(mesh_z[c], coords, order=1, mode="nearest") for c in range(2)])


def _mirror(c: np.ndarray, n: int) -> np.ndarray:
    period = 2.0 * (n - 1)
    c = np.mod(c, period)
    return np.where(c > n - 1, period - c, c)


def render_section(raw_section, mesh_z, size, y0, y1, x0, x1) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, outside mask) of the aligned section over [y0, y1) x [x0, x1); ``raw_section`` is the
    (lazily sliced) raw section; only the window the positions need is read."""
    ys, xs = np.arange(y0, y1), np.arange(x0, x1)
    src = np.stack(np.meshgrid(ys, xs, indexing="ij")).astype(np.float64) + displacement(mesh_z, size, ys, xs)
    outside = ((src[0] < 0) | (src[0] > size[0] - 1) | (src[1] < 0) | (src[1] > size[1] - 1))
    src = np.stack([_mirror(src[0], size[0]), _mirror(src[1], size[1])])
    lo = [max(0, int(np.floor(src[a].min()))) for a in range(2)]
    hi = [min(size[a], int(np.ceil(src[a].max())) + 2) for a in range(2)]
    window = np.asarray(raw_section[lo[0]:hi[0], lo[1]:hi[1]], np.float32)
    local = src - np.array(lo, np.float64).reshape(2, 1, 1)
    return ndimage.map_coordinates(window, local, order=1, mode="nearest"), outside


def render(raw, transforms: dict, z0, z1, y0, y1, x0, x1) -> tuple[np.ndarray, np.ndarray]:
    """(aligned uint8, defects uint8 bit flags) of the box [z0, z1) x [y0, y1) x [x0, x1) of ``raw`` (z, y, x,
    numpy or zarr). ``transforms``: ``mesh``, ``status``, ``gain`` and ``bias`` per section (grey values
    ``gain * v + bias``). A missing or blank section is the mean of its nearest usable neighbours' renderings."""
    size = tuple(raw.shape[1:])
    status, mesh = transforms["status"], transforms["mesh"]
    usable = np.flatnonzero(np.isin(status, USABLE))
    out = np.empty((z1 - z0, y1 - y0, x1 - x0), np.uint8)
    flags = np.zeros(out.shape, np.uint8)

    def one(z):
        img, outside = render_section(raw[z], mesh[z], size, y0, y1, x0, x1)
        return img * transforms["gain"][z] + transforms["bias"][z], outside

    for i, z in enumerate(range(z0, z1)):
        if status[z] in USABLE:
            img, outside = one(z)
            flags[i][outside] |= NO_DATA
            if status[z] == "low_contrast":
                flags[i] |= LOW_CONTRAST
        else:
            below, above = usable[usable < z], usable[usable > z]
            parts = [one(int(e[k])) for e, k in ((below, -1), (above, 0)) if len(e)]
            img = np.mean([p[0] for p in parts], axis=0)
            flags[i] = MISSING
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, flags


def intensity(stats: pd.DataFrame, status, equalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """(gain, bias) per section: identity, except low-contrast sections (with ``equalize``) mapped to the median
    mean and std of the ok sections."""
    gain, bias = np.ones(len(status)), np.zeros(len(status))
    ok = np.asarray(status) == "ok"
    if equalize and ok.any():
        mean, std = float(np.median(stats["mean"][ok])), float(np.median(stats["std"][ok]))
        for z in np.flatnonzero(np.asarray(status) == "low_contrast"):
            gain[z] = std / max(float(stats["std"][z]), 1e-6)
            bias[z] = mean - gain[z] * float(stats["mean"][z])
    return gain, bias


def invert(mesh_z: np.ndarray, size, q: np.ndarray, iterations: int = 30) -> np.ndarray:
    """The aligned positions p (2, n) whose raw position p + D(p) is q (2, n), by fixed-point iteration."""
    p = np.asarray(q, np.float64).copy()
    ny, nx = mesh_z.shape[1:]
    for _ in range(iterations):
        g = np.stack([p[0] * ((ny - 1) / (size[0] - 1)), p[1] * ((nx - 1) / (size[1] - 1))])
        d = np.stack([ndimage.map_coordinates(mesh_z[c], g, order=1, mode="nearest") for c in range(2)])
        p = q - d
    return p
