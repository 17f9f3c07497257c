"""``connectomix phantom``: generate the ground-truth phantom and write it (arrays, tables, montage)."""

from __future__ import annotations

import json

from connectomix.phantom import PhantomParams, generate, write


def add_arguments(parser) -> None:
    parser.add_argument("--out-dir", required=True, help="dataset folder; ground truth goes to OUT_DIR/gt/")
    parser.add_argument("--volume", required=True, help="the dataset's OME-Zarr (raw, gt/labels, gt/clefts, gt/mito)")
    parser.add_argument("--params", default="{}", help="JSON of the config's phantom: mapping (defaults fill the rest)")
    parser.add_argument("--voxel-size", type=float, nargs=3, default=(40, 8, 8), metavar=("Z", "Y", "X"),
                        help="voxel size in nm (default 40 8 8)")
    parser.add_argument("--offset-nm", type=float, nargs=3, default=(0, 0, 0), metavar=("Z", "Y", "X"))
    parser.add_argument("--chunk-shape", type=int, nargs=3, default=(8, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--pyramid-levels", type=int, default=3)
    parser.add_argument("--pyramid-factor", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"))


def run(args) -> int:
    try:
        values = json.loads(args.params)
    except json.JSONDecodeError as error:
        raise ValueError(f"--params is not valid JSON: {error}") from error
    params = PhantomParams.from_dict(values)
    ph = generate(params, tuple(args.voxel_size))
    write(ph, args.out_dir, args.volume, args.chunk_shape, tuple(args.offset_nm), args.pyramid_levels,
          args.pyramid_factor)
    print(json.dumps(ph.stats, indent=1))
    return 0
