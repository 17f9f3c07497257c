"""``python -m connectomix train``: train on a volume's ground truth (or ground-truth files) or on a phantom."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from connectomix.evaluate.segmentation import load_ground_truth, load_mask
from connectomix.train.data import at_pixel_nm, load_phantom_data, load_volume_data
from connectomix.train.loop import merge_params, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``connectomix train``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", help="OME-Zarr with raw, gt/labels (and gt/clefts)")
    source.add_argument("--phantom", metavar="JSON",
                        help="generate this phantom (connectomix.phantom parameters as JSON) in memory and train on it")
    source.add_argument("--sources", metavar="JSON",
                        help="train on several volumes together: a JSON list (or a .json file holding one) of "
                             "sources, each an object of this command's source options without dashes, e.g. "
                             '[{"volume": "a.zarr"}, {"volume": "b.zarr", "gt_file": "b.h5", "gt_key": "stack"}, '
                             '{"phantom": {"seed": 8}, "voxel_size": [40, 8, 8]}]; with train.pixel_nm each is '
                             "resampled in-plane to that pixel size")
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


SOURCE_KEYS = ("volume", "phantom", "voxel_size", "synapses", "gt_file", "gt_key", "gt_format", "gt_roi_offset",
               "gt_per_section", "clefts_file", "clefts_key", "clefts_format")


def _load_source(spec: dict, merged: dict):
    """One source's training data and the command-line text that names it (``spec``: option names as keys)."""
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    if unknown or bool(spec.get("volume")) == bool(spec.get("phantom")):
        raise ValueError(f"a training source needs exactly one of volume or phantom, and only the keys "
                         f"{', '.join(SOURCE_KEYS)}; got {sorted(spec)}")
    gt_file, clefts_file = spec.get("gt_file"), spec.get("clefts_file")
    if spec.get("phantom") and (gt_file or clefts_file):
        raise ValueError("--gt-file and --clefts-file go with --volume (a phantom brings its own ground truth)")
    if spec.get("gt_per_section") and not gt_file:
        raise ValueError("--gt-per-section describes --gt-file: give the file")
    if spec.get("phantom"):
        phantom = spec["phantom"]
        phantom = json.loads(phantom) if isinstance(phantom, str) else phantom
        voxel_size = spec.get("voxel_size") or [40.0, 8.0, 8.0]
        data = load_phantom_data(phantom, voxel_size, merged["pre_post_distance_nm"], merged["cleft_radius_nm"])
        return data, (f"--phantom '{json.dumps(phantom)}' --voxel-size {' '.join(f'{v:g}' for v in voxel_size)} ")
    labels = clefts = None
    source = f"--volume {spec['volume']} "
    per_section = bool(spec.get("gt_per_section"))
    if gt_file:
        gt_format = spec.get("gt_format") or "auto"
        fmt = "png-membrane" if gt_format == "auto" and Path(gt_file).is_dir() else gt_format
        per_section = per_section or fmt.startswith("png-")  # section images hold 2D instances
        labels = load_ground_truth(gt_file=gt_file, gt_key=spec.get("gt_key"), gt_format=fmt)
        source += (f"--gt-file {gt_file} " + (f"--gt-key {spec['gt_key']} " if spec.get("gt_key") else "")
                   + f"--gt-format {gt_format} " + ("--gt-per-section " if per_section else ""))
    if clefts_file:
        clefts = load_mask(clefts_file, spec.get("clefts_key"), spec.get("clefts_format") or "auto")
        source += (f"--clefts-file {clefts_file} " + (f"--clefts-key {spec['clefts_key']} " if spec.get("clefts_key")
                                                      else "") + f"--clefts-format {spec.get('clefts_format') or 'auto'} ")
    if spec.get("gt_roi_offset"):
        source += f"--gt-roi-offset {' '.join(map(str, spec['gt_roi_offset']))} "
    data = load_volume_data(spec["volume"], spec.get("synapses"), merged["pre_post_distance_nm"],
                            merged["cleft_radius_nm"], labels, gt_file, spec.get("gt_roi_offset"), per_section, clefts,
                            clefts_file)
    return data, source


def _sources(text: str) -> list[dict]:
    path = Path(text)
    try:
        value = json.loads(path.read_text() if text.endswith(".json") and path.exists() else text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--sources is not valid JSON (nor a .json file holding it): {error}") from error
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"--sources must be a non-empty JSON list of objects, got {str(value)[:80]}")
    return value


def parse_params(args) -> tuple[dict, dict]:
    """``--params`` as given (JSON) and merged over the defaults (:func:`~connectomix.train.loop.merge_params`)."""
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as error:
        raise ValueError(f"--params is not valid JSON: {error}") from error
    return params, merge_params(params)


def launch(verb: str, inputs: str, fit, data, params: dict, merged: dict, args) -> tuple[dict, float]:
    """Run ``fit`` (:func:`~connectomix.train.loop.train` or :func:`~connectomix.train.pretrain.pretrain`) with the
    CLI's output, device and resume options, recording the command line (``python -m connectomix {verb} {inputs}``
    and the common options); returns its checkpoint JSON and the seconds it took."""
    command = (f"python -m connectomix {verb} {inputs}--out {args.out} "
               f"--params '{json.dumps(params, sort_keys=True)}' --device {args.device} --threads {args.threads}")
    t0 = time.time()
    payload = fit(data, merged, args.out, args.device, args.threads, resume=not args.no_resume,
                  progress=not args.no_progress, extra_meta={"command": command})
    return payload, time.time() - t0


def run(args) -> int:
    """Load the training data the options name, train (or resume) and print a one-line summary."""
    params, merged = parse_params(args)
    if args.sources:
        specs = _sources(args.sources)
        loaded = [_load_source(spec, merged) for spec in specs]
        data = [d for d, _ in loaded]
        data = [at_pixel_nm(d, merged["pixel_nm"]) for d in data]
        source = f"--sources '{json.dumps(specs, sort_keys=True)}' "
    else:
        spec = {k: getattr(args, k) for k in SOURCE_KEYS if getattr(args, k, None) not in (None, False)}
        if args.phantom:
            spec.pop("gt_format", None), spec.pop("clefts_format", None)
        data, source = _load_source(spec, merged)
        data = at_pixel_nm(data, merged["pixel_nm"])
    inputs = source + (f"--synapses {args.synapses} " if args.synapses else "")
    payload, seconds = launch("train", inputs, train, data, params, merged, args)
    print(f"train: {payload['iterations']} iterations, validation {payload['validation']} "
          f"({seconds:.0f} s) -> {args.out}")
    return 0
