"""Neuroglancer: the segmentation as a precomputed volume (written with cloud-volume, unsharded, uncompressed
files so any static file server works) and a viewer state JSON (image + segmentation + skeleton layers).

The precomputed info names ``skeletons`` as its skeleton folder (``export.skeletons`` fills it), ``mesh`` (the mesh
stage) and ``segment_properties`` (``export.annotations``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from connectomix.blocks import BlockGrid, atomic_write_json
from connectomix.io import open_array, read_meta


def precomputed_url(path: str | Path) -> str:
    """The cloud-volume path of a local precomputed folder."""
    return f"precomputed://file://{Path(path).resolve()}"


def write_segmentation(volume: str | Path, array: str, out_dir: str | Path, encoding: str = "compressed_segmentation",
                       block_shape=None) -> dict:
    """Write ``array`` of the OME-Zarr ``volume`` as a single-scale precomputed segmentation at ``out_dir``.

    Coordinates: resolution = voxel size (x, y, z) nm, voxel_offset = offset_nm / voxel size (rounded), so the
    layer lines up with skeletons in nm. Written block by block (storage-chunk aligned). Returns the info.
    """
    from cloudvolume import CloudVolume

    meta = read_meta(volume, array)
    src = open_array(volume, array)
    vs = np.asarray(meta.voxel_size, float)
    offset_vox = np.rint(np.asarray(meta.offset_nm, float) / vs).astype(int)
    chunk = [int(c) for c in meta.spatial_chunks]
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type=str(np.dtype(meta.dtype)), encoding=encoding,
        resolution=[float(v) for v in vs[::-1]], voxel_offset=[int(v) for v in offset_vox[::-1]],
        volume_size=[int(s) for s in meta.spatial_shape[::-1]], chunk_size=chunk[::-1], skeletons="skeletons",
        mesh="mesh",
    )
    info["segment_properties"] = "segment_properties"  # export.annotations writes it
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vol = CloudVolume(f"file://{out_dir.resolve()}", info=info, compress=False, progress=False)
    vol.commit_info()
    grid = BlockGrid(meta.spatial_shape, block_shape or [c * 4 for c in chunk], chunk_shape=chunk)
    for block in grid:
        data = np.asarray(src[block.write.slices])
        lo = np.asarray(block.write.offset) + offset_vox
        hi = np.asarray(block.write.end) + offset_vox
        vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.ascontiguousarray(data.T)[..., None]
    return info


def state(
    base_url: str,
    voxel_size,
    shape,
    offset_nm=(0, 0, 0),
    segments=(),
    image: str = "volume.zarr/raw",
    segmentation: str = "precomputed/segmentation",
    annotations=(),
) -> dict:
    """A Neuroglancer viewer state: the raw image (OME-Zarr), the segmentation with its meshes and skeletons, the
    skeletons alone, and the ``annotations`` layers (names under precomputed/, ``export.annotations.LAYERS``)
    linked to the segmentation; ``base_url`` is where results/{dataset}/ is served (http://..., or a local
    path)."""
    from connectomix.export.annotations import LAYERS

    base = base_url.rstrip("/")
    vz, vy, vx = (float(v) for v in voxel_size)
    centre_vox = [(s / 2 + o / v) for s, o, v in zip(shape, offset_nm, voxel_size)]
    segs = [str(int(s)) for s in segments]
    return {
        "dimensions": {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"], "z": [vz * 1e-9, "m"]},
        "position": [centre_vox[2], centre_vox[1], centre_vox[0]],
        "crossSectionScale": 1,
        "projectionScale": float(max(shape[1] * vy, shape[2] * vx)),
        "layers": [
            {"type": "image", "name": "raw", "source": f"zarr://{base}/{image}"},
            {"type": "segmentation", "name": "segmentation", "source": f"precomputed://{base}/{segmentation}",
             "segments": segs, "selectedAlpha": 0.35},
            {"type": "segmentation", "name": "skeletons", "source": f"precomputed://{base}/{segmentation}/skeletons",
             "segments": segs, "skeletonRendering": {"mode2d": "lines_and_points", "mode3d": "lines"}},
        ] + [
            {"type": "annotation", "name": name, "source": f"precomputed://{base}/precomputed/{name}",
             "linkedSegmentationLayer": {rel: "segmentation" for rel in LAYERS[name]}}
            for name in annotations
        ],
        "layout": "xy-3d",
        "selectedLayer": {"layer": "segmentation"},
    }


def add_arguments(sub) -> None:
    p = sub.add_parser("neuroglancer", help="precomputed segmentation and/or a Neuroglancer state JSON")
    p.add_argument("--volume", required=True, help="the dataset's OME-Zarr (volume.zarr)")
    p.add_argument("--array", default="segmentation", help="label array to export (default segmentation)")
    p.add_argument("--precomputed", default=None, help="write the precomputed segmentation to this folder")
    p.add_argument("--encoding", default="compressed_segmentation", choices=["raw", "compressed_segmentation"],
                   help="precomputed chunk encoding (default compressed_segmentation)")
    p.add_argument("--state", default=None, help="write a Neuroglancer state JSON here")
    p.add_argument("--base-url", default=".", help="URL (or path) where results/{dataset}/ is served")
    p.add_argument("--morphology", default=None,
                   help="morphology.parquet: its longest segments are selected in the state")
    p.add_argument("--top", type=int, default=20, help="segments selected in the state (default 20)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.precomputed and not args.state:
        raise ValueError("nothing to do: give --precomputed and/or --state")
    if args.precomputed:
        info = write_segmentation(args.volume, args.array, args.precomputed, args.encoding)
        print(f"precomputed segmentation: {args.precomputed} ({info['scales'][0]['size']} voxels x, y, z)")
    if args.state:
        meta = read_meta(args.volume, args.array)
        segments = []
        if args.morphology:
            import pandas as pd

            morph = pd.read_parquet(args.morphology)
            segments = morph.sort_values("cable_length_nm", ascending=False)["id"].head(args.top).tolist()
        from connectomix.export.annotations import present

        st = state(args.base_url, meta.voxel_size, meta.spatial_shape, meta.offset_nm, segments,
                   annotations=present(Path(args.volume).parent / "precomputed"))
        atomic_write_json(args.state, st)
        print(f"neuroglancer state: {args.state} ({len(segments)} segments selected)")
    return 0


def load_state(path: str | Path) -> dict:
    """Read a state JSON written by ``run``."""
    return json.loads(Path(path).read_text())
