"""``connectomix skeletonize``: blockwise kimimaro skeletons, merged per segment, and morphology.

Actions (each one Snakemake job kind):

* ``somata``: find the somata of a label array once for the whole volume (``soma.find_somata_in_volume``):
  ``somata.parquet``, read by every block (each clears the somata's spheres before tracing) and by the merge
  (which joins each soma's neurites to its centre).
* ``block``: skeletonize one block of a label array (read ROI = write ROI + halo), crop to the write ROI,
  save the pieces (``.npz``) and the block marker.
* ``merge``: fuse every segment's pieces into one tree (see ``connectomix.skeletonize.core``) and write
  ``skeletons.parquet`` (layout in ``connectomix.skeletonize.morphology``) and a JSON summary.
* ``morphology``: per-segment cable length, branch points, tips, radii, soma, extent, axon/dendrite split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from connectomix.skeletonize.core import (  # noqa: F401  (public API)
    Skel, finalize, kimimaro_skeletons, load_pieces, merge_all, merge_pieces, save_pieces, skeletonize_block,
    skeletonize_blockwise, skeletonize_whole, somata_nm, to_tree,
)
from connectomix.skeletonize.params import DEFAULTS, resolve  # noqa: F401


def _zyx(text):
    return [int(v) for v in text]


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    so = sub.add_parser("somata", help="find the somata of a label array (once per volume, before the blocks)")
    so.add_argument("--volume", required=True, help="the dataset's OME-Zarr (volume.zarr)")
    so.add_argument("--array", default="segmentation", help="label array in the volume (default segmentation)")
    so.add_argument("--params", default="{}", help="`skeletonize:` config section as JSON (defaults filled)")
    so.add_argument("--out", required=True, help="somata.parquet to write")
    so.set_defaults(func=_run_somata)

    b = sub.add_parser("block", help="skeletonize blocks (one after another), each cropped to its write ROI")
    b.add_argument("--volume", required=True, help="the dataset's OME-Zarr (volume.zarr)")
    b.add_argument("--array", default="segmentation", help="label array in the volume (default segmentation)")
    b.add_argument("--block", "--blocks", dest="blocks", nargs="+", required=True, metavar="ID",
                   help="block ids z<i>_y<j>_x<k>; with more than one, give --pieces-dir and --marker-dir")
    b.add_argument("--block-shape", nargs=3, type=int, required=True, metavar=("Z", "Y", "X"),
                   help="block (write ROI) shape in voxels")
    b.add_argument("--chunk-shape", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                   help="storage chunk shape (checks block alignment)")
    b.add_argument("--params", default="{}", help="`skeletonize:` config section as JSON (defaults filled)")
    b.add_argument("--pieces", help="output .npz of the block's skeleton pieces (one block)")
    b.add_argument("--marker", help="block marker JSON, written last (one block)")
    b.add_argument("--pieces-dir", help="folder for <block>.npz pieces (any number of blocks)")
    b.add_argument("--marker-dir", help="folder for <block>.json markers, each written last (any number of blocks)")
    b.add_argument("--threads", type=int, default=1, help="kimimaro processes (default 1)")
    b.add_argument("--somata", default=None, help="somata.parquet (`skeletonize somata`); without it, no soma")
    b.set_defaults(func=_run_block)

    m = sub.add_parser("merge", help="merge block pieces into one tree per segment")
    m.add_argument("--volume", required=True, help="the dataset's OME-Zarr (volume.zarr)")
    m.add_argument("--array", default="segmentation", help="label array the blocks read (default segmentation)")
    m.add_argument("--block-shape", nargs=3, type=int, required=True, metavar=("Z", "Y", "X"),
                   help="block shape in voxels (the grid the pieces came from)")
    m.add_argument("--pieces-dir", required=True, help="folder of <block>.npz pieces")
    m.add_argument("--params", default="{}", help="`skeletonize:` config section as JSON")
    m.add_argument("--segments", default=None,
                   help="segments.parquet (optional): only its ids are kept when it has an `id` column")
    m.add_argument("--somata", default=None, help="somata.parquet the blocks used (`skeletonize somata`)")
    m.add_argument("--out", required=True, help="skeletons.parquet to write")
    m.add_argument("--summary", required=True, help="JSON summary (counts, timings, provenance)")
    m.set_defaults(func=_run_merge)

    g = sub.add_parser("morphology", help="per-segment morphology table")
    g.add_argument("--skeletons", required=True, help="skeletons.parquet")
    g.add_argument("--params", default="{}", help="`skeletonize:` config section as JSON")
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
    return args.func(args)


def _grid(volume, array, block_shape, halo, chunk_shape=None):
    from connectomix.blocks import BlockGrid
    from connectomix.io import read_meta

    meta = read_meta(volume, array)
    return BlockGrid(meta.spatial_shape, block_shape, halo, chunk_shape), meta


def _read_somata(path) -> dict:
    import pandas as pd

    from connectomix.skeletonize.soma import somata_dict

    return somata_dict(pd.read_parquet(path)) if path else {}


def _run_somata(args) -> int:
    from connectomix.blocks import atomic_write_parquet
    from connectomix.skeletonize.soma import find_somata_in_volume

    params = resolve(json.loads(args.params))
    table = find_somata_in_volume(args.volume, args.array, params)
    atomic_write_parquet(table, args.out)
    print(f"{len(table)} somata")
    return 0


def _run_block(args) -> int:
    from connectomix.blocks import write_marker
    from connectomix.io import open_array

    single = args.pieces is not None or args.marker is not None
    if single and (len(args.blocks) != 1 or args.pieces is None or args.marker is None):
        raise ValueError("--pieces and --marker name one block's files: give both, with exactly one --block "
                         "(for several blocks use --pieces-dir and --marker-dir)")
    if not single and (args.pieces_dir is None or args.marker_dir is None):
        raise ValueError("give --pieces and --marker (one block) or --pieces-dir and --marker-dir")
    params = resolve(json.loads(args.params))
    grid, meta = _grid(args.volume, args.array, args.block_shape, params["halo"], args.chunk_shape)
    blocks = [grid.block(b) for b in args.blocks]  # every id checked before any work
    source = open_array(args.volume, args.array)
    somata = _read_somata(args.somata)
    for block in blocks:
        pieces_path = args.pieces if single else Path(args.pieces_dir) / f"{block.id}.npz"
        marker_path = args.marker if single else Path(args.marker_dir) / f"{block.id}.json"
        start = time.perf_counter()
        labels = np.asarray(source[block.read.slices])
        t_read = time.perf_counter() - start
        pieces, counts = skeletonize_block(labels, block, meta.voxel_size, params, meta.offset_nm, args.threads,
                                           somata, volume_shape=grid.volume_shape)
        save_pieces(pieces_path, pieces, counts)
        write_marker(marker_path, block, pieces=len(pieces), vertices=int(sum(len(p) for p in pieces.values())),
                     labels=len(counts), read_s=round(t_read, 3), total_s=round(time.perf_counter() - start, 3))
        print(f"{block.id}: {len(pieces)} skeleton pieces, {len(counts)} labels")
    return 0


def _run_merge(args) -> int:
    import pandas as pd

    from connectomix.blocks import atomic_write_json, atomic_write_parquet
    from connectomix.provenance import input_digests, record
    from connectomix.skeletonize.morphology import skeletons_to_table

    params = resolve(json.loads(args.params))
    grid, meta = _grid(args.volume, args.array, args.block_shape, params["halo"])
    start = time.perf_counter()
    by_label: dict[int, list[Skel]] = {}
    counts: dict[int, int] = {}
    for block_id in grid.ids():
        path = Path(args.pieces_dir) / f"{block_id}.npz"
        if not path.exists():
            raise FileNotFoundError(f"missing skeleton pieces of block {block_id}: {path}")
        pieces, block_counts = load_pieces(path)
        for label, piece in pieces.items():
            by_label.setdefault(label, []).append(piece)
        for label, c in block_counts.items():
            counts[label] = counts.get(label, 0) + c
    if args.segments:
        seg = pd.read_parquet(args.segments)
        if "id" in seg.columns:
            keep = set(int(i) for i in seg["id"])
            by_label = {k: v for k, v in by_label.items() if k in keep}
    stats: dict = {}
    somata = somata_nm(_read_somata(args.somata), meta.voxel_size, meta.offset_nm, params)
    skels = merge_all(by_label, counts, params, stats, somata)
    table = skeletons_to_table(skels, soma_ids=somata)
    atomic_write_parquet(table, args.out)
    not_trees = [k for k, s in skels.items() if s.n_components() != 1]
    atomic_write_json(args.summary, {
        "segments": len(skels), "vertices": len(table), "blocks": len(grid),
        "cable_length_nm": float(sum(s.cable_length() for s in skels.values())),
        "segments_not_one_tree": len(not_trees), **stats,
        "merge_s": round(time.perf_counter() - start, 3),
        "somata": len(somata),
        "provenance": record({"skeletonize": params},
                             input_digests(args.volume, [args.array], {"segments": args.segments,
                                                                       "somata": args.somata})),
    })
    print(f"{len(skels)} skeletons, {len(table)} vertices ({len(not_trees)} not a single tree)")
    return 0


def _run_morphology(args) -> int:
    import pandas as pd

    from connectomix.blocks import atomic_write_json, atomic_write_parquet
    from connectomix.provenance import input_digests, record
    from connectomix.skeletonize.morphology import morphology_table, soma_ids, table_to_trees, with_soma_bodies

    params = resolve(json.loads(args.params))
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
