"""``python -m connectomix train``: train on a volume's ground truth (or ground-truth files) or on a phantom."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from connectomix.evaluate.segmentation import load_ground_truth, load_mask
from connectomix.train.data import load_phantom_data, load_volume_data
from connectomix.train.loop import merge_params, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``connectomix train``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", help="OME-Zarr with raw, gt/labels (and gt/clefts)")
    source.add_argument("--phantom", metavar="JSON",
                        help="generate this phantom (connectomix.phantom parameters as JSON) in memory and train on it")
    parser.add_argument("--voxel-size", type=float, nargs=3, default=[40.0, 8.0, 8.0], metavar=("Z", "Y", "X"),
                        help="voxel size in nm for --phantom (default 40 8 8)")
    parser.add_argument("--synapses", default=None, help="gt/synapses.parquet (pre/post targets)")
    parser.add_argument("--gt-file", help="with --volume: ground-truth labels in a file (HDF5, zarr) instead of the "
                                          "volume's gt/labels (0 = boundary / unlabelled)")
    parser.add_argument("--gt-key", help="dataset inside --gt-file (HDF5 default 'stack')")
    parser.add_argument("--gt-format", default="auto",
                        choices=["auto", "hdf5", "zarr", "png-membrane", "png-boundary"],
                        help="--gt-file format (png-*: a folder of 2D section images: implies --gt-per-section)")
    parser.add_argument("--gt-roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="crop --gt-file and --clefts-file to the volume from this voxel (the dataset's roi.offset)")
    parser.add_argument("--gt-per-section", action="store_true",
                        help="--gt-file holds 2D instances per section: the z affinities get no target")
    parser.add_argument("--clefts-file", help="with --volume: cleft ground truth in a file (a folder of mask PNGs, "
                                              "HDF5, zarr; nonzero = cleft) instead of the volume's gt/clefts; "
                                              "trains the cleft channel only")
    parser.add_argument("--clefts-key", help="dataset inside --clefts-file (HDF5 default 'stack')")
    parser.add_argument("--clefts-format", default="auto", choices=["auto", "hdf5", "zarr", "png-mask"],
                        help="--clefts-file format")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (weights.pt, checkpoint.json)")
    parser.add_argument("--params", default="{}", help="the `train` config section as JSON (defaults filled)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present, else CPU), cpu, cuda ...")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Load the training data the options name, train (or resume) and print a one-line summary."""
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as error:
        raise ValueError(f"--params is not valid JSON: {error}") from error
    merged = merge_params(params)
    if args.phantom and (args.gt_file or args.clefts_file):
        raise ValueError("--gt-file and --clefts-file go with --volume (a phantom brings its own ground truth)")
    if args.gt_per_section and not args.gt_file:
        raise ValueError("--gt-per-section describes --gt-file: give the file")
    if args.phantom:
        data = load_phantom_data(json.loads(args.phantom), args.voxel_size, merged["pre_post_distance_nm"],
                                 merged["cleft_radius_nm"])
        source = f"--phantom '{args.phantom}' --voxel-size {' '.join(f'{v:g}' for v in args.voxel_size)} "
    else:
        labels = clefts = None
        source = f"--volume {args.volume} "
        per_section = args.gt_per_section
        if args.gt_file:
            fmt = "png-membrane" if args.gt_format == "auto" and Path(args.gt_file).is_dir() else args.gt_format
            per_section = per_section or fmt.startswith("png-")  # section images hold 2D instances
            labels = load_ground_truth(gt_file=args.gt_file, gt_key=args.gt_key, gt_format=fmt)
            source += (f"--gt-file {args.gt_file} " + (f"--gt-key {args.gt_key} " if args.gt_key else "")
                       + f"--gt-format {args.gt_format} " + ("--gt-per-section " if per_section else ""))
        if args.clefts_file:
            clefts = load_mask(args.clefts_file, args.clefts_key, args.clefts_format)
            source += (f"--clefts-file {args.clefts_file} " + (f"--clefts-key {args.clefts_key} " if args.clefts_key
                                                                else "") + f"--clefts-format {args.clefts_format} ")
        if args.gt_roi_offset:
            source += f"--gt-roi-offset {' '.join(map(str, args.gt_roi_offset))} "
        data = load_volume_data(args.volume, args.synapses, merged["pre_post_distance_nm"], merged["cleft_radius_nm"],
                                labels, args.gt_file, args.gt_roi_offset, per_section, clefts, args.clefts_file)
    command = (f"python -m connectomix train {source}"
               + (f"--synapses {args.synapses} " if args.synapses else "")
               + f"--out {args.out} --params '{json.dumps(params, sort_keys=True)}' --device {args.device} "
               + f"--threads {args.threads}")
    t0 = time.time()
    payload = train(data, merged, args.out, args.device, args.threads, resume=not args.no_resume,
                    progress=not args.no_progress, extra_meta={"command": command})
    print(f"train: {payload['iterations']} iterations, validation {payload['validation']} "
          f"({time.time() - t0:.0f} s) -> {args.out}")
    return 0
