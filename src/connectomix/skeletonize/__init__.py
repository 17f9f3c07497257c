"""``connectomix skeletonize``: blockwise kimimaro skeletons, merged per segment, and morphology.

Actions (each one Snakemake job kind; ``setup``, ``block`` and ``finish`` follow :mod:`connectomix.blockwise`):

* ``setup``: record the parameters, the label array and the block grid (halo ``params.halo``) in
  ``{work_dir}/setup.json``.
* ``somata``: find the somata of the label array once for the whole volume (``soma.find_somata_in_volume``):
  ``{work_dir}/somata.parquet``, read by every block (each clears the somata's spheres before tracing) and by
  ``finish`` (which joins each soma's neurites to its centre). Without it, no soma.
* ``block``: skeletonize blocks (read ROI = write ROI + halo), crop to the write ROI, save the pieces
  (``{work_dir}/pieces/{block}.npz``); the marker ``blocks/skeletonize/{block}.json`` is written last.
* ``finish``: fuse every segment's pieces into one tree (see ``connectomix.skeletonize.core``) and write
  ``skeletons.parquet`` (layout in ``connectomix.skeletonize.morphology``) and a JSON summary.
* ``morphology``: per-segment cable length, branch points, tips, radii, soma, extent, axon/dendrite split.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from connectomix.blockwise import Stage, Step, grid_of, json_object, load_setup, new_setup, option, save_setup
from connectomix.skeletonize.core import (  # noqa: F401  (public API)
    Skel, finalize, kimimaro_skeletons, load_pieces, merge_all, merge_pieces, save_pieces, skeletonize_block,
    skeletonize_blockwise, skeletonize_whole, somata_nm, to_tree,
)
from connectomix.skeletonize.params import DEFAULTS, resolve  # noqa: F401

SOMATA = "somata.parquet"


def setup(volume, work_dir, params, block_shape, chunk_shape=None, marker_dir=None, array="segmentation") -> dict:
    """Write ``{work_dir}/setup.json``: the resolved parameters, the label array and its block grid. Somata found
    before (they depend on the parameters) are removed: run ``somata`` again."""
    from connectomix.io import read_meta
    from connectomix.provenance import record

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
    import pandas as pd

    from connectomix.skeletonize.soma import somata_dict

    return somata_dict(pd.read_parquet(path)) if path else {}


def _prepare(s: dict, options: dict) -> dict:
    from connectomix.io import open_array

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
    import pandas as pd

    from connectomix.blocks import atomic_write_json, atomic_write_parquet
    from connectomix.provenance import input_digests, record
    from connectomix.skeletonize.morphology import skeletons_to_table

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


def add_arguments(parser) -> None:
    """``skeletonize setup | block | finish`` (connectomix.blockwise), ``somata`` and ``morphology``."""
    from connectomix.blockwise import add_arguments as blockwise_arguments

    sub = blockwise_arguments(parser, STAGE)
    so = sub.add_parser("somata", help="find the somata of the label array (once per volume, before the blocks)")
    so.add_argument("--work-dir", required=True, help="the stage's folder (holds setup.json; gets somata.parquet)")
    so.set_defaults(func=_run_somata)

    g = sub.add_parser("morphology", help="per-segment morphology table")
    g.add_argument("--skeletons", required=True, help="skeletons.parquet")
    g.add_argument("--params", type=json_object, default={}, help="`skeletonize:` config section as JSON")
    g.add_argument("--synapses", default=None,
                   help="optional parquet of synapse sites (id, z_nm, y_nm, x_nm, kind pre|post) for the "
                        "polarity split (axon_dendrite.method = synapses)")
    g.add_argument("--volume", default=None,
                   help="the dataset's OME-Zarr (optional): measure each soma as a body on --array (soma_body)")
    g.add_argument("--array", default="segmentation", help="label array of --volume (default segmentation)")
    g.add_argument("--out", required=True, help="morphology.parquet to write")
    g.add_argument("--summary", help="JSON summary with provenance to write (last)")
    g.set_defaults(func=_run_morphology)


def run(args) -> int:
    return int(args.func(args) or 0)


def _run_somata(args) -> int:
    from connectomix.blocks import atomic_write_parquet
    from connectomix.skeletonize.soma import find_somata_in_volume

    s = load_setup(args.work_dir, "skeletonize")
    table = find_somata_in_volume(s["volume"], s["array"], resolve(s["params"]))
    atomic_write_parquet(table, Path(args.work_dir) / SOMATA)
    print(f"{len(table)} somata")
    return 0


def _run_morphology(args) -> int:
    import pandas as pd

    from connectomix.blocks import atomic_write_json, atomic_write_parquet
    from connectomix.provenance import input_digests, record
    from connectomix.skeletonize.morphology import morphology_table, soma_ids, table_to_trees, with_soma_bodies

    params = resolve(args.params)
    skeletons = pd.read_parquet(args.skeletons)
    trees = table_to_trees(skeletons)
    synapses_by_id = None
    if args.synapses:
        syn = pd.read_parquet(args.synapses)
        synapses_by_id = {int(k): g for k, g in syn.groupby("id")}
    table = morphology_table(trees, params, synapses_by_id, soma_ids(skeletons))
    if args.volume:
        table = with_soma_bodies(table, args.volume, args.array, params)
    atomic_write_parquet(table, args.out)
    if args.summary:
        atomic_write_json(args.summary, {
            "segments": len(table), "with_soma": int(table["has_soma"].sum()) if len(table) else 0,
            "soma_bodies": int(table["soma_volume_nm3"].notna().sum()) if len(table) else 0,
            "provenance": record({"skeletonize": params},
                                 input_digests(args.volume, [args.array] if args.volume else [],
                                               {"skeletons": args.skeletons, "synapses": args.synapses})),
        })
    print(f"morphology of {len(table)} segments ({int(table['has_soma'].sum()) if len(table) else 0} with a soma)")
    return 0
