"""Alignment accuracy against a phantom's true section transforms: ``eval/align.json`` (stage ``align``).

The phantom's ``gt/align/points.parquet`` lists, on a grid of every section, an observed raw position and the
aligned position it shows. The alignment maps aligned p to raw p + D_z(p); inverting it at each raw grid point gives
where the alignment put that tissue, and the residual is its distance from the true aligned position, after removing
the one translation common to the whole stack (the aligned frame of an alignment without outside reference is fixed
only up to that). Points in missing or blank sections and on fold/crack bands are left out.

Metrics (nm): ``residual_median_nm`` / ``residual_p95_nm``; ``residual_before_*`` (raw as it came, identity);
``neighbour_residual_*``: the difference of the residuals of adjacent sections at one grid point (what a 3D
segmentation sees); ``defect_sections_found`` (missing/blank and low-contrast sections flagged, of those the phantom
has) and ``false_defect_sections`` (sections flagged that are ok).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from connectomix.align import core
from connectomix.evaluate import write_stage_metrics


def residuals(mesh: np.ndarray, size, points: pd.DataFrame, voxel_size, offset_nm=(0, 0, 0)) -> pd.DataFrame:
    """Per valid point: z, grid index, and the residual vector (nm) of the alignment ``mesh`` (z, 2, ny, nx px)
    and of the identity; both with the stack's mean residual removed."""
    vy, vx = float(voxel_size[1]), float(voxel_size[2])
    pts = points[points.valid].copy()
    q = np.stack([(pts.raw_y_nm - offset_nm[1]) / vy, (pts.raw_x_nm - offset_nm[2]) / vx])
    truth = np.stack([(pts.aligned_y_nm - offset_nm[1]) / vy, (pts.aligned_x_nm - offset_nm[2]) / vx])
    found = np.empty_like(q)
    zs = pts.z.to_numpy()
    for z in np.unique(zs):
        sel = zs == z
        found[:, sel] = core.invert(mesh[z], size, q[:, sel])
    scale = np.array([[vy], [vx]])
    for name, est in (("after", found), ("before", q)):
        err = (est - truth) * scale
        err -= err.mean(axis=1, keepdims=True)
        pts[f"{name}_y_nm"], pts[f"{name}_x_nm"] = err
    return pts


def neighbour_residuals(pts: pd.DataFrame, name: str = "after") -> np.ndarray:
    """|residual(z) - residual(z')| (nm) at each grid point for consecutive sections z < z' with valid points."""
    table = pts.set_index(["z", "raw_y_nm", "raw_x_nm"])[[f"{name}_y_nm", f"{name}_x_nm"]]
    zs = sorted(pts.z.unique())
    out = []
    for z0, z1 in zip(zs[:-1], zs[1:]):
        a, b = table.loc[z0], table.loc[z1]
        both = a.index.intersection(b.index)
        out.append(np.hypot(*(a.loc[both].to_numpy() - b.loc[both].to_numpy()).T))
    return np.concatenate(out) if out else np.zeros(0)


def evaluate(mesh, size, points, truth_sections: pd.DataFrame, found_sections: pd.DataFrame, voxel_size,
             offset_nm=(0, 0, 0)) -> dict:
    """The metrics of the module docstring."""
    pts = residuals(mesh, size, points, voxel_size, offset_nm)
    metrics = {}
    for name in ("after", "before"):
        r = np.hypot(pts[f"{name}_y_nm"], pts[f"{name}_x_nm"])
        n = neighbour_residuals(pts, name)
        prefix = "residual" if name == "after" else "residual_before"
        metrics[f"{prefix}_median_nm"] = float(np.median(r))
        metrics[f"{prefix}_p95_nm"] = float(np.percentile(r, 95))
        prefix = "neighbour_residual" if name == "after" else "neighbour_residual_before"
        metrics[f"{prefix}_median_nm"] = float(np.median(n)) if len(n) else float("nan")
        metrics[f"{prefix}_p95_nm"] = float(np.percentile(n, 95)) if len(n) else float("nan")
    truth = truth_sections.set_index("z").status.replace({"blank": "missing"})
    found = found_sections.set_index("z").status.replace({"blank": "missing"})
    defects = truth.isin(["missing", "low_contrast"])
    metrics["defect_sections"] = int(defects.sum())
    metrics["defect_sections_found"] = float((found[defects] == truth[defects]).mean()) if defects.any() else 1.0
    metrics["false_defect_sections"] = int((found[truth == "ok"] != "ok").sum())
    metrics["points"] = int(len(pts))
    return metrics


def add_arguments(subparsers) -> None:
    p = subparsers.add_parser("align", help="alignment residuals against the phantom -> eval/align.json")
    p.add_argument("--volume", required=True, help="the dataset's OME-Zarr (raw's shape, voxel size and offset)")
    p.add_argument("--work-dir", required=True, help="the align stage's folder (transforms and sections tables)")
    p.add_argument("--points", required=True, help="the phantom's gt/align/points.parquet")
    p.add_argument("--sections-gt", required=True, help="the phantom's gt/align/sections.parquet")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from connectomix.align.blockwise import load_transforms
    from connectomix.io import read_meta

    meta = read_meta(args.volume, "raw")
    transforms = load_transforms(args.work_dir)
    metrics = evaluate(transforms["mesh"], meta.spatial_shape[1:], pd.read_parquet(args.points),
                       pd.read_parquet(args.sections_gt), pd.read_parquet(Path(args.work_dir) / "sections.parquet"),
                       meta.voxel_size, meta.offset_nm)
    write_stage_metrics(args.out, "align", metrics)
    print(json.dumps(metrics, indent=1))
    return 0
