"""``connectomix pyramid``: (re)build the multiscale pyramid of one array of an OME-Zarr volume."""

from __future__ import annotations

from connectomix.io import build_pyramid


def add_arguments(parser) -> None:
    parser.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
    parser.add_argument("--array", required=True, help="array name inside the volume, e.g. raw or gt/labels")
    parser.add_argument("--levels", type=int, default=3, help="levels including full resolution (default 3)")
    parser.add_argument("--factor", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"),
                        help="downsampling factor per level (default 1 2 2)")


def run(args) -> int:
    written = build_pyramid(args.volume, args.array, args.levels, args.factor)
    print(f"{args.volume}/{args.array}: {written} level(s)")
    return 0
