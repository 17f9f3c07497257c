"""The skeletonize stage on :mod:`connectomix.blockwise`: ``setup`` (parameters, label array, grid), the
``skeletonize`` block step (kimimaro per block, pieces saved) and ``finish`` (one tree per segment:
``skeletons.parquet``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix.blocks import atomic_write_json, atomic_write_parquet
from connectomix.blockwise import Stage, Step, grid_of, load_setup, new_setup, option, save_setup
from connectomix.io import open_array, read_meta
from connectomix.provenance import input_digests, record
from connectomix.skeletonize.merge import merge_all
from connectomix.skeletonize.morphology import skeletons_to_table
from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.soma import somata_dict, somata_nm
from connectomix.skeletonize.trace import load_pieces, save_pieces, skeletonize_block
from connectomix.skeletonize.tree import Skel

SOMATA = "somata.parquet"


def setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None, array="segmentation") -> dict:
    """Write ``{work_dir}/setup.json``: the resolved parameters, the label array and its block grid. Somata found
    before (they depend on the parameters) are removed: run ``somata`` again."""
    params = resolve(params)
    meta = read_meta(volume, array)
    s = new_setup("skeletonize", volume, work_dir, shape=meta.spatial_shape, block_shape=block_shape,
                  chunk_shape=tuple(chunk_shape or meta.spatial_chunks), halo=params["halo"],
                  voxel_size=meta.voxel_size, offset_nm=meta.offset_nm, params=params,
                  provenance=record({"skeletonize": params}), marker_dir=marker_dir, array=array)
    (Path(work_dir) / SOMATA).unlink(missing_ok=True)
    return save_setup(s)


def _somata_path(s: dict) -> Path | None:
    path = Path(s["work_dir"]) / SOMATA
    return path if path.exists() else None


def _read_somata(path) -> dict:
    return somata_dict(pd.read_parquet(path)) if path else {}


def _prepare(s: dict, options: dict) -> dict:
    return {"source": open_array(s["volume"], s["array"]), "somata": _read_somata(_somata_path(s)),
            "params": resolve(s["params"]), "threads": options["threads"]}


def skeletonize_one(s: dict, block, context: dict) -> dict:
    """One block: kimimaro on its read ROI (somata cleared), pieces cropped to its write ROI, saved to
    ``{work_dir}/pieces/{block}.npz``."""
    start = time.perf_counter()
    labels = np.asarray(context["source"][block.read.slices])
    read_s = time.perf_counter() - start
    pieces, counts = skeletonize_block(labels, block, s["voxel_size"], context["params"], s["offset_nm"],
                                       context["threads"], context["somata"], volume_shape=tuple(s["shape"]))
    save_pieces(Path(s["work_dir"]) / "pieces" / f"{block.id}.npz", pieces, counts)
    return {"pieces": len(pieces), "vertices": int(sum(len(p) for p in pieces.values())), "labels": len(counts),
            "somata": len(context["somata"]), "read_s": round(read_s, 3)}


def finish(work_dir, skeletons, summary=None, segments=None) -> dict:
    """Fuse every segment's pieces into one tree: ``skeletons.parquet`` and the summary JSON (last)."""
    s = load_setup(work_dir, "skeletonize")
    params = resolve(s["params"])
    grid = grid_of(s)
    start = time.perf_counter()
    by_label: dict[int, list[Skel]] = {}
    counts: dict[int, int] = {}
    for block_id in grid.ids():
        path = Path(work_dir) / "pieces" / f"{block_id}.npz"
        if not path.exists():
            raise FileNotFoundError(f"missing skeleton pieces of block {block_id}: {path}")
        pieces, block_counts = load_pieces(path)
        for label, piece in pieces.items():
            by_label.setdefault(label, []).append(piece)
        for label, c in block_counts.items():
            counts[label] = counts.get(label, 0) + c
    if segments:
        seg = pd.read_parquet(segments)
        if "id" in seg.columns:
            keep = set(int(i) for i in seg["id"])
            by_label = {k: v for k, v in by_label.items() if k in keep}
    stats: dict = {}
    somata_path = _somata_path(s)
    somata = somata_nm(_read_somata(somata_path), s["voxel_size"], s["offset_nm"], params)
    skels = merge_all(by_label, counts, params, stats, somata)
    table = skeletons_to_table(skels, soma_ids=somata)
    atomic_write_parquet(table, skeletons)
    not_trees = [k for k, sk in skels.items() if sk.n_components() != 1]
    out = {
        "segments": len(skels), "vertices": len(table), "blocks": len(grid),
        "cable_length_nm": float(sum(sk.cable_length() for sk in skels.values())),
        "segments_not_one_tree": len(not_trees), **stats,
        "merge_s": round(time.perf_counter() - start, 3),
        "somata": len(somata),
        "provenance": record({"skeletonize": params},
                             input_digests(s["volume"], [s["array"]], {"segments": segments,
                                                                       "somata": somata_path})),
    }
    if summary:
        atomic_write_json(summary, out)
    return out


STAGE = Stage("skeletonize", setup, (Step("skeletonize", skeletonize_one, _prepare),), finish, runtime=("threads",),
              setup_options=(option("--array", default="segmentation",
                                    help="label array in the volume (default segmentation)"),),
              finish_options=(option("--skeletons", required=True, help="skeletons.parquet to write"),
                              option("--segments", default=None, help="segments.parquet (optional): only its ids "
                                                                      "are kept when it has an `id` column")))
