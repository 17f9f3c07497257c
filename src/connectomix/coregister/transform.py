"""The EM -> imaging transform of co-registration.

An affine ``M`` (4x4) maps EM (x, y, z, 1) in nm to imaging (x, y, z) in µm, as the phantom's ``affine.json``.
With landmark pairs (config ``coregister.landmarks``) it is a least-squares fit. Without, correspondences are unknown:
RANSAC draws ROI triangles, finds soma triangles of matching side lengths (similarity with a scale prior), scores each
hypothesis by how many ROIs land next to a soma (MSAC), and trimmed ICP refines the winner to a full affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree


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


def robust_sigma(residuals: np.ndarray) -> float:
    """Per-axis noise sigma from 3-D residual distances, robustly (by the median of their squares)."""
    # 3-D isotropic noise: d^2 ~ sigma^2 chi2(3), whose median is 2.366.
    return float(np.sqrt(np.median(residuals**2) / 2.366)) if len(residuals) else float("nan")


def sigma_upper_bound(sigma: float, n_pairs: int, confidence: float = 0.95) -> float:
    """Upper ``confidence`` bound of a per-axis noise sigma that ``robust_sigma`` estimated from ``n_pairs`` 3-D
    residuals (from the median of d^2, an order statistic of chi2(3) draws: its low quantile follows from a beta
    distribution). With tens of pairs the estimate is itself uncertain by 10-15 %: a gate of five estimated sigmas
    could fall near four true ones (phantom seed 19: sigma 0.023 um estimated, the imaging jitter is 0.03 um, and a
    right ROI at 0.119 um was left out by a 0.116 um gate)."""
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
            keep &= d_rs <= max(trim_sigmas * robust_sigma(d_rs[keep]), np.median(d_rs[keep]))
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
            return FitResult(matrix, method, int(inl.sum()), robust_sigma(d[inl]), info)
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
    return FitResult(matrix, method if landmarks is None else "landmarks+icp", len(pairs),
                     robust_sigma(d) * np.sqrt(dof), info)

