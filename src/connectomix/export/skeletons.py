"""Skeleton exports: SWC files per segment and Neuroglancer precomputed skeletons.

SWC (``{id}.swc``): one line per vertex ``n T x y z R P`` with positions and radius in nm (EM frame), T the
compartment (1 soma, 2 axon, 3 dendrite, 0 undefined; ``connectomix.skeletonize.morphology.compartments``),
parents before children, roots with P = -1. Read with navis.read_swc, neuTube, Vaa3D...

Precomputed: unsharded ``neuroglancer_skeletons`` (vertices in nm (x, y, z), identity transform, a float32
``radius`` and a float32 ``vertex_types`` (compartment) attribute) in the ``skeletons`` folder of a precomputed segmentation (``export.neuroglancer``), written
with cloud-volume and read back by it (``CloudVolume(...).skeleton.get(id)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from connectomix.blocks import atomic_write_json
from connectomix.skeletonize.morphology import iter_compartments
from connectomix.skeletonize.params import resolve


def to_swc(label: int, skel, parent: np.ndarray, compartment: np.ndarray) -> str:
    """SWC text of one rooted tree (positions x, y, z in nm)."""
    lines = [f"# connectomix skeleton of segment {label}", "# positions and radii in nm (EM frame)",
             "# n T x y z R P"]
    v = skel.vertices
    for i in range(len(skel)):
        p = int(parent[i])
        lines.append(f"{i + 1} {int(compartment[i])} {v[i, 2]:.3f} {v[i, 1]:.3f} {v[i, 0]:.3f} "
                     f"{float(skel.radii[i]):.3f} {p + 1 if p >= 0 else -1}")
    return "\n".join(lines) + "\n"


def write_swc_dir(table, out_dir: str | Path, params: dict | None = None) -> int:
    """One ``{id}.swc`` per segment of a skeletons table; returns the number written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for label, skel, parent, comp in iter_compartments(table, params):
        tmp = out_dir / f".{label}.swc.tmp"
        tmp.write_text(to_swc(label, skel, parent, comp))
        tmp.replace(out_dir / f"{label}.swc")
        n += 1
    return n


# float32 compartments: the Neuroglancer client never draws skeletons with a uint8 attribute (it waits forever)
ATTRIBUTES = [{"id": "radius", "data_type": "float32", "num_components": 1},
              {"id": "vertex_types", "data_type": "float32", "num_components": 1}]


def write_precomputed(table, segmentation_dir: str | Path, params: dict | None = None) -> int:
    """Upload every segment's skeleton into the ``skeletons`` folder of the precomputed segmentation at
    ``segmentation_dir`` (its info must exist); returns the number written."""
    from cloudvolume import CloudVolume, Skeleton

    seg_dir = Path(segmentation_dir).resolve()
    if not (seg_dir / "info").exists():
        raise FileNotFoundError(f"no precomputed segmentation info at {seg_dir} (run export neuroglancer first)")
    vol = CloudVolume(f"file://{seg_dir}", compress=False, progress=False)
    if not vol.info.get("skeletons"):
        vol.info["skeletons"] = "skeletons"
        vol.commit_info()
    vol.skeleton.meta.info = {
        "@type": "neuroglancer_skeletons",
        "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],  # vertices are nm already
        "vertex_attributes": ATTRIBUTES,
        "sharding": None,
        "spatial_index": None,
    }
    vol.skeleton.meta.commit_info()
    skels = []
    for label, skel, parent, comp in iter_compartments(table, params):
        child = np.flatnonzero(parent >= 0)
        skels.append(Skeleton(
            skel.vertices[:, ::-1].astype(np.float32), np.stack([child, parent[child]], axis=1).astype(np.uint32),
            radii=skel.radii.astype(np.float32), vertex_types=comp.astype(np.float32), segid=int(label),
            space="physical", extra_attributes=ATTRIBUTES,
        ))
    if skels:
        vol.skeleton.upload(skels)
    return len(skels)


def add_arguments(sub) -> None:
    p = sub.add_parser("skeletons", help="SWC files and Neuroglancer precomputed skeletons")
    p.add_argument("--skeletons", required=True, help="skeletons.parquet")
    p.add_argument("--params", default="{}", help="`skeletonize:` config section as JSON (compartments)")
    p.add_argument("--swc-dir", default=None, help="write {id}.swc files here")
    p.add_argument("--precomputed", default=None,
                   help="precomputed segmentation folder whose skeletons/ to fill (info must exist)")
    p.add_argument("--summary", default=None, help="JSON summary to write last")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import pandas as pd

    params = resolve(json.loads(args.params))
    table = pd.read_parquet(args.skeletons)
    summary = {"segments": int(table["id"].nunique()) if len(table) else 0}
    if args.swc_dir:
        summary["swc_files"] = write_swc_dir(table, args.swc_dir, params)
    if args.precomputed:
        summary["precomputed_skeletons"] = write_precomputed(table, args.precomputed, params)
    if args.summary:
        atomic_write_json(args.summary, summary)
    print(json.dumps(summary))
    return 0
