"""``connectomix plan``: the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from connectomix import config as cmx_config
from connectomix.plan.core import default_rates_path, load_rates, make_plan, shape_from_size
from connectomix.plan.refresh import refresh_rates
from connectomix.plan.render import render
from connectomix.predict import augment_variants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shape", nargs=3, type=float, metavar=("Z", "Y", "X"), help="volume shape in voxels")
    size.add_argument("--size-um", nargs=3, type=float, metavar=("Z", "Y", "X"),
                      help="physical extent in micrometres (voxels = extent / voxel size, rounded up)")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), default=None,
                        help="voxel size in nm (z, y, x); required with --shape/--size-um")
    parser.add_argument("--block-shape", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="block shape in voxels (default: blocks.shape of --config, else the schema default)")
    parser.add_argument("--chunk-shape", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="storage chunk shape (default: storage.chunk_shape of --config / the schema default)")
    parser.add_argument("--per-job", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="blocks per job of a blockwise step, a (z, y, x) brick (default: blocks.per_job of "
                             "--config, else auto)")
    parser.add_argument("--max-jobs", type=int,
                        help="with per-job auto: the most jobs per blockwise step (default: blocks.max_jobs of "
                             "--config, else the schema default)")
    parser.add_argument("--config", type=Path, help="a connectomix config: blocks, storage and pyramid settings")
    parser.add_argument("--source", choices=["ingest", "phantom"], default="ingest",
                        help="first stage: ingest real sections (default) or generate a phantom")
    parser.add_argument("--rates", type=Path, help="rates file (default: the shipped connectomix/data/rates.yaml)")
    parser.add_argument("--json", type=Path, help="also write the plan as JSON here")
    parser.add_argument("--refresh-rates", type=Path, metavar="BENCH_DIR",
                        help="re-derive the rates from benchmark results in BENCH_DIR (e.g. benchmarks/results)")
    parser.add_argument("--measure-storage", type=Path, metavar="DATASET_DIR",
                        help="with --refresh-rates: bytes on disk per voxel from a finished run, e.g. results/phantom")
    parser.add_argument("--rates-out", type=Path, help="where --refresh-rates writes (default: the --rates file)")


def run(args) -> int:
    if args.refresh_rates is not None or args.measure_storage is not None:
        source = args.rates or default_rates_path()
        out = args.rates_out or source
        rates = refresh_rates(source, args.refresh_rates, args.measure_storage, out)
        print(f"wrote {out} (version {rates['version']})")
        if args.shape is None and args.size_um is None:
            return 0
    if args.shape is None and args.size_um is None:
        raise ValueError("give the volume as --shape Z Y X (voxels) or --size-um Z Y X (micrometres)")
    if args.voxel_size is None:
        raise ValueError("--voxel-size Z Y X (nm) is required")
    shape = args.shape if args.shape is not None else shape_from_size(args.size_um, args.voxel_size)
    block_shape, chunk_shape, pyramid = args.block_shape, args.chunk_shape, None
    per_job, max_jobs, passes = args.per_job or "auto", args.max_jobs, 1
    if args.config is not None:
        cfg = cmx_config.load(args.config)
        block_shape = block_shape or cfg["blocks"]["shape"]
        chunk_shape = chunk_shape or cfg["storage"]["chunk_shape"]
        pyramid = cfg["pyramid"]
        per_job = args.per_job or cfg["blocks"]["per_job"]
        max_jobs = max_jobs if max_jobs is not None else cfg["blocks"]["max_jobs"]
        passes = len(augment_variants(cfg["predict"]["augment"], args.voxel_size[1] == args.voxel_size[2]))
    rates = load_rates(args.rates)
    plan = make_plan(shape, args.voxel_size, block_shape, chunk_shape, pyramid, rates, source=args.source,
                     per_job=per_job, max_jobs=max_jobs, predict_passes=passes)
    print(render(plan), end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(plan, indent=1) + "\n")
    return 0
