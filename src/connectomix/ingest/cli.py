"""``connectomix ingest``: the command line of the ingest stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

from connectomix.blocks import atomic_write_json
from connectomix.ingest.core import ingest


def add_arguments(parser) -> None:
    """Options of ``connectomix ingest``."""
    parser.add_argument("--source", required=True,
                        help="JSON of the dataset's source mapping: {path, format, key, pattern, normalize}")
    parser.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
    parser.add_argument("--voxel-size", type=float, nargs=3, required=True, metavar=("Z", "Y", "X"),
                        help="voxel size, nm")
    parser.add_argument("--offset-nm", type=float, nargs=3, default=(0, 0, 0), metavar=("Z", "Y", "X"),
                        help="position of source voxel (0, 0, 0), nm")
    parser.add_argument("--chunk-shape", type=int, nargs=3, default=(8, 64, 64), metavar=("Z", "Y", "X"),
                        help="storage chunk, voxels; sections are read chunk_shape[0] at a time")
    parser.add_argument("--roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"), help="crop start, voxels")
    parser.add_argument("--roi-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="crop size, voxels")
    parser.add_argument("--pyramid-levels", type=int, default=3, help="pyramid levels, level 0 included")
    parser.add_argument("--pyramid-factor", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"))
    parser.add_argument("--digest-block-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="the workflow's block shape: the summary then has a digest of every block's voxels")
    parser.add_argument("--summary", help="write the summary JSON here (last, atomically)")


def run(args) -> int:
    """Run ``connectomix ingest``: ingest, then write the summary JSON (removing any stale one first)."""
    if args.summary:
        Path(args.summary).unlink(missing_ok=True)  # a failed run must not leave an old summary to trust
    try:
        source = json.loads(args.source)
    except ValueError as error:
        raise ValueError(f"--source is not valid JSON ({error}): {args.source!r}") from None
    if (args.roi_offset is None) != (args.roi_shape is None):
        raise ValueError("--roi-offset and --roi-shape go together")
    roi = None if args.roi_offset is None else {"offset": args.roi_offset, "shape": args.roi_shape}
    t = time.perf_counter()
    summary = ingest(source, args.volume, args.voxel_size, args.offset_nm, args.chunk_shape, roi,
                     args.pyramid_levels, args.pyramid_factor, args.digest_block_shape)
    summary["timings"]["total_s"] = round(time.perf_counter() - t, 4)
    if args.summary:
        atomic_write_json(args.summary, summary)
    return 0
