"""``connectomix segment``: watershed fragments, global agglomeration, stitching and relabelling, blockwise.

Actions (one Snakemake job each; blockwise ones take ``--blocks``)::

    segment setup       --volume V --work-dir W --params JSON --block-shape Z Y X [--chunk-shape Z Y X]
    segment fragments   --work-dir W --blocks z0_y0_x0 ...
    segment rag         --work-dir W --blocks ...      (after the fragments of the block and its lower neighbours)
    segment agglomerate --work-dir W                   (global: merged RAG -> lookup table)
    segment relabel     --work-dir W --blocks ...      (writes `segmentation`)
    segment finish      --work-dir W --segments results/{dataset}/segments.parquet --summary S.json
    segment all         --volume V --work-dir W ...    (everything in one process, for small volumes)

``W`` is ``results/{dataset}/segment``; block markers go to ``results/{dataset}/blocks/{stage}/{block}.json``.
"""

from __future__ import annotations

import json

from connectomix.segment.agglomerate import agglomerate as agglomerate_rag
from connectomix.segment.agglomerate import apply_lut, hierarchical, lookup_table, mutex
from connectomix.segment.fragments import block_fragments, fragment_id_base, watershed_fragments
from connectomix.segment.params import resolve
from connectomix.segment.rag import Rag, block_rag, merge_rags, volume_rag
from connectomix.segment.stitch import segment_volume

__all__ = [
    "Rag", "agglomerate_rag", "apply_lut", "block_fragments", "block_rag", "fragment_id_base",
    "hierarchical", "lookup_table", "merge_rags", "mutex", "resolve", "segment_volume", "volume_rag",
    "watershed_fragments",
]


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--params is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError("--params must be a JSON object")
    return value


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p, volume=False):
        if volume:
            p.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
        p.add_argument("--work-dir", required=True, help="stage folder (results/{dataset}/segment)")

    def setup_args(p):
        p.add_argument("--params", type=_json, default={}, help="the `segment` config section as JSON")
        p.add_argument("--block-shape", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"),
                       help="block (write ROI) shape, voxels")
        p.add_argument("--chunk-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                       help="storage chunk of the output arrays, voxels (default: the affinities' chunks)")
        p.add_argument("--marker-dir", help="folder of per-block markers (default: WORK_DIR/../blocks)")

    p = sub.add_parser("setup", help="create the output arrays and record parameters and the block grid")
    common(p, volume=True)
    setup_args(p)
    for name, text in (("fragments", "watershed fragments of the given blocks"),
                       ("rag", "region adjacency edges owned by the given blocks"),
                       ("relabel", "write segmentation for the given blocks")):
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("--blocks", nargs="+", required=True, help="block ids, e.g. z0_y0_x1")
    p = sub.add_parser("agglomerate", help="merge block RAGs, agglomerate globally, write the lookup table")
    common(p)
    for name, text in (("finish", "segments.parquet, pyramid, stage summary"),
                       ("all", "every step in this process (small volumes)")):
        p = sub.add_parser(name, help=text)
        common(p, volume=(name == "all"))
        if name == "all":
            setup_args(p)
            p.add_argument("--workers", type=int, default=1, help="processes for the blockwise steps (default 1)")
        p.add_argument("--segments", required=True, help="segments.parquet to write")
        p.add_argument("--summary", help="stage summary JSON to write (results/{dataset}/segment.json)")
        p.add_argument("--pyramid-levels", type=int, default=1, help="levels incl. full resolution (default 1)")
        p.add_argument("--pyramid-factor", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"),
                       help="downsampling per level (default 1 2 2)")


def run(args) -> int:
    from connectomix.segment import stitch

    if args.action == "setup":
        record = stitch.setup(args.volume, args.work_dir, args.params, args.block_shape, args.chunk_shape,
                              args.marker_dir)
        print(f"segment setup: {record['blocks']} blocks of {record['block_shape']}, mode {record['mode']}")
    elif args.action in ("fragments", "rag", "relabel"):
        step = {"fragments": stitch.fragments_block, "rag": stitch.rag_block, "relabel": stitch.relabel_block}
        for block in args.blocks:
            fields = step[args.action](args.work_dir, block)
            print(f"segment {args.action} {block}: {json.dumps(fields, sort_keys=True)}")
    elif args.action == "agglomerate":
        print(json.dumps(stitch.agglomerate(args.work_dir), sort_keys=True))
    elif args.action == "finish":
        summary = stitch.finish(args.work_dir, args.segments, args.summary, args.pyramid_levels, args.pyramid_factor)
        print(f"segment finish: {summary['segments']} segments")
    elif args.action == "all":
        if args.marker_dir:
            raise ValueError("segment all writes markers under WORK_DIR/../blocks; --marker-dir is for setup")
        summary = stitch.segment_volume(args.volume, args.work_dir, args.params, args.block_shape, args.chunk_shape,
                                        args.segments, args.summary, args.pyramid_levels,
                                        args.pyramid_factor, args.workers)
        print(f"segment all: {summary['segments']} segments, timings {summary['timings']}")
    return 0
