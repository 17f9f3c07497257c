"""The mesh stage on :mod:`connectomix.blockwise`: ``setup`` (parameters, label array, grid with a one-voxel halo),
the ``mesh`` block step (zmesh marching cubes of one block, pieces saved) and ``finish`` (pieces welded per
segment, simplified, written as Neuroglancer precomputed legacy meshes)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix import config
from connectomix.blocks import atomic_write_json
from connectomix.blockwise import Stage, Step, grid_of, load_setup, new_setup, option, save_setup
from connectomix.io import open_array, read_meta
from connectomix.mesh.core import PIECES_KEYS, mesh_block, pack, simplify, unpack, weld
from connectomix.mesh.precomputed import name_in_info, write_legacy
from connectomix.provenance import input_digests, record

# A block meshes its write ROI plus one voxel on its high sides (connectomix.mesh.core): the read ROI.
HALO = (1, 1, 1)


def resolve(params: dict | None = None) -> dict:
    """The `mesh:` config section: ``params`` over the schema's defaults."""
    return config.resolve("mesh", params)


def setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None, array="segmentation") -> dict:
    """Write ``{work_dir}/setup.json``: the resolved parameters, the label array and its block grid."""
    params = resolve(params)
    meta = read_meta(volume, array)
    s = new_setup("mesh", volume, work_dir, shape=meta.spatial_shape, block_shape=block_shape,
                  chunk_shape=tuple(chunk_shape or meta.spatial_chunks), halo=HALO, voxel_size=meta.voxel_size,
                  offset_nm=meta.offset_nm, params=params, provenance=record({"mesh": params}),
                  marker_dir=marker_dir, array=array)
    return save_setup(s)


def _prepare(s: dict, options: dict) -> dict:
    return {"source": open_array(s["volume"], s["array"])}


def pieces_path(s: dict, block_id: str) -> Path:
    """Where a block's mesh pieces are saved."""
    return Path(s["work_dir"]) / "pieces" / f"{block_id}.npz"


def mesh_one(s: dict, block, context: dict) -> dict:
    """One block: marching cubes of its write ROI (+ one voxel on its high sides), unsimplified pieces saved to
    ``{work_dir}/pieces/{block}.npz``."""
    start = time.perf_counter()
    labels = np.asarray(context["source"][block.read.slices])
    read_s = time.perf_counter() - start
    meshes, voxels = mesh_block(labels, block, s["voxel_size"], s["shape"])
    path = pieces_path(s, block.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **pack(meshes, voxels))
    tmp.replace(path)
    return {"labels": len(voxels), "meshes": len(meshes), "faces": int(sum(len(f) for _, f in meshes.values())),
            "read_s": round(read_s, 3)}


def merge_pieces(s: dict, block_ids, keep=None) -> dict:
    """Every segment's welded, simplified mesh from the blocks' pieces: {label: (vertices nm, faces)}; segments
    under ``min_segment_voxels`` (or not in ``keep``) are left out."""
    params = resolve(s["params"])
    pieces: dict[int, list] = {}
    voxels: dict[int, int] = {}
    for block_id in block_ids:
        path = pieces_path(s, block_id)
        if not path.exists():
            raise FileNotFoundError(f"missing mesh pieces of block {block_id}: {path}")
        with np.load(path) as arrays:
            for label, (n, v, f) in unpack({k: arrays[k] for k in PIECES_KEYS}).items():
                voxels[label] = voxels.get(label, 0) + n
                if len(f):
                    pieces.setdefault(label, []).append((v, f))
    offset = np.asarray(s["offset_nm"], float)[::-1]
    out = {}
    for label in sorted(pieces):
        if voxels.get(label, 0) < params["min_segment_voxels"] or (keep is not None and label not in keep):
            continue
        v, f = weld(pieces.pop(label), s["voxel_size"])
        v, f = simplify(v, f, s["voxel_size"], params["reduction_factor"], params["max_error_nm"])
        out[label] = ((v + offset).astype(np.float32), f)
    return out


def finish(work_dir, out, summary=None, segments=None) -> dict:
    """Weld and simplify every segment's mesh, write them as precomputed legacy meshes to ``out`` (the ``mesh``
    folder of a precomputed segmentation, whose info is made to name it), then the summary JSON (last)."""
    s = load_setup(work_dir, "mesh")
    start = time.perf_counter()
    keep = None
    if segments:
        table = pd.read_parquet(segments, columns=["id"])
        keep = set(int(i) for i in table["id"])
    meshes = merge_pieces(s, grid_of(s).ids(), keep)
    merge_s = time.perf_counter() - start
    nbytes = write_legacy(meshes, out)
    name_in_info(out)
    faces = [len(f) for _, f in meshes.values()]
    result = {
        "segments": len(meshes), "blocks": len(grid_of(s)), "faces": int(sum(faces)),
        "faces_per_segment_median": float(np.median(faces)) if faces else 0.0,
        "bytes": int(nbytes), "merge_s": round(merge_s, 3), "out": str(out),
        "provenance": record({"mesh": resolve(s["params"])},
                             input_digests(s["volume"], [s["array"]], {"segments": segments})),
    }
    if summary:
        atomic_write_json(summary, result)
    return result


STAGE = Stage("mesh", setup, (Step("mesh", mesh_one, _prepare),), finish,
              setup_options=(option("--array", default="segmentation",
                                    help="label array in the volume (default segmentation)"),),
              finish_options=(option("--out", required=True,
                                     help="mesh folder to write (precomputed/segmentation/mesh)"),
                              option("--segments", default=None,
                                     help="segments.parquet (optional): only its ids get a mesh")))
